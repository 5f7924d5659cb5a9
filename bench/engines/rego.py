"""regorus (Rego, in Rust): the rule set as data, one generic policy.

At thousands of rules the idiomatic Rego is a table keyed by action that
one policy consults (``data.rules[input.action]``), not one Rego rule per
policy rule: an engine without rule indexing would otherwise try every
rule body.  Roles and plan entitlements are objects so that membership is
a key look-up.  Each request, license facts included, is one JSON input.
"""

import json

from bench import workload as w
from bench.engines import Unavailable, package_version

POLICY = """\
package bench

default allow := false

allow if {
\tlicense_ok
\tnot denied
\trule := data.rules[input.action]
\tinput.resource.type == rule.type
\tstartswith(input.resource.id, rule.id_prefix)
\trole_ok(rule)
\tentitled(rule)
\tconditions_hold(rule)
}

license_ok if {
\tinput.license.status == "active"
\tinput.now >= input.license.valid_from
\tinput.now < input.license.valid_until
}

denied if input.context.country in %(embargoed)s

denied if {
\tinput.license.attributes.data_residency == "eu"
\tregion := input.context.region
\tnot region in %(eu_regions)s
}

denied if input.subject.attributes.locked == "true"

role_ok(rule) if count(rule.roles) == 0

role_ok(rule) if {
\tsome role in input.subject.roles
\trule.roles[role]
}

entitled(rule) if data.plans[input.license.plan][rule.entitlement]

entitled(rule) if rule.entitlement in input.license.entitlements

conditions_hold(rule) if rule.op == "view"

conditions_hold(rule) if {
\trule.op == "edit"
\tinput.context.env in %(envs)s
}

conditions_hold(rule) if {
\trule.op == "export"
\tto_number(input.subject.attributes.level) >= %(level)d
\tinput.context.env == "prod"
}

conditions_hold(rule) if {
\trule.op == "share"
\tinput.license.attributes.sharing == "on"
}

conditions_hold(rule) if {
\trule.op == "admin"
\tinput.subject.attributes.mfa == "true"
}
"""


def _set(items) -> str:
    return "{%s}" % ", ".join(json.dumps(i) for i in items)


def policy_text() -> str:
    return POLICY % {"embargoed": _set(w.EMBARGOED),
                     "eu_regions": _set(w.EU_REGIONS),
                     "envs": _set(w.ENVS),
                     "level": w.MIN_EXPORT_LEVEL}


def policy_data(rules: list) -> dict:
    areas = w.n_areas(rules)
    plans = {}
    for rank, plan in enumerate(w.PLANS):
        plans[plan] = {"area%d" % a: True for a in range(areas)
                       if a % 4 <= rank}
    table = {}
    for rule in rules:
        table[rule.action] = {
            "type": rule.resource_type,
            "id_prefix": rule.id_prefix,
            "roles": {r: True for r in rule.roles},
            "entitlement": rule.entitlement,
            "op": rule.op,
        }
    return {"rules": table, "plans": plans}


def request_input(workload, r, now_ms: int) -> dict:
    return {
        "account": r.account_id,
        "license": workload.license_facts(r.account_id),
        "subject": {"id": r.subject_id, "roles": list(r.roles),
                    "attributes": r.subject_attributes},
        "action": r.action,
        "resource": {"type": r.resource_type, "id": r.resource_id},
        "context": r.context,
        "now": now_ms,
    }


class RegoEngine:
    name = "regorus"
    notes = ("rules as data keyed by action; license facts in the input "
             "(JSON)")

    def __init__(self, workload):
        import regorus

        self.version = package_version("gordon-to-regorus")
        self.engine = regorus.Engine()
        self.engine.add_policy("bench.rego", policy_text())
        self.engine.add_data_json(json.dumps(policy_data(workload.rules)))
        self.workload = workload
        self.now_ms = _now_ms()

    def inputs(self, requests) -> list:
        return [json.dumps(request_input(self.workload, r, self.now_ms))
                for r in requests]

    def decide(self, item) -> bool:
        self.engine.set_input_json(item)
        return self.engine.eval_rule("data.bench.allow") is True

    def close(self) -> None:
        pass


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def build(name: str, workload):
    try:
        return RegoEngine(workload)
    except ImportError as exc:
        raise Unavailable("pip package gordon-to-regorus is not "
                          "installed (%s)" % exc) from exc
