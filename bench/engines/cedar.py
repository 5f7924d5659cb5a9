"""Cedar (cedarpy): one permit per rule, forbids for the denies.

The request's principal is the subject, its action the action, its
resource an entity of the request's resource type.  Cedar policies cannot
read an entity id, and attributes of the license, subject and call travel
in the context; ``subject.level`` is passed as a Long because Cedar has no
string-to-number conversion.  Policies and the (empty) entity set are
parsed once into reusable handles.
"""

import json
import time

from bench import workload as w
from bench.engines import Unavailable, package_version


def _set(items) -> str:
    return "[%s]" % ", ".join(json.dumps(i) for i in items)


FORBIDS = """\
forbid (principal, action, resource)
unless {
  context.license.status == "active" &&
  context.license.valid_from <= context.now &&
  context.now < context.license.valid_until
};

forbid (principal, action, resource)
when {
  context.call has country &&
  %(embargoed)s.contains(context.call.country)
};

forbid (principal, action, resource)
when {
  context.license.attributes has data_residency &&
  context.license.attributes.data_residency == "eu" &&
  context.call has region &&
  !%(eu)s.contains(context.call.region)
};

forbid (principal, action, resource)
when { context.subject has locked && context.subject.locked == "true" };
""" % {"embargoed": _set(w.EMBARGOED), "eu": _set(w.EU_REGIONS)}

CONDITIONS = {
    "view": None,
    "edit": "context.call has env && %s.contains(context.call.env)"
            % _set(w.ENVS),
    "export": ("context.subject has level && context.subject.level >= %d"
               " && context.call has env && context.call.env == \"prod\""
               % w.MIN_EXPORT_LEVEL),
    "share": ("context.license.attributes has sharing"
              " && context.license.attributes.sharing == \"on\""),
    "admin": "context.subject has mfa && context.subject.mfa == \"true\"",
}


def permit(rule) -> str:
    tests = []
    if rule.id_prefix:
        tests.append("context.resource_id like \"%s*\"" % rule.id_prefix)
    if rule.roles:
        tests.append("context.roles.containsAny(%s)" % _set(rule.roles))
    tests.append("(%s.contains(context.license.plan) || "
                 "context.license.entitlements.contains(%s))"
                 % (_set(rule.plans), json.dumps(rule.entitlement)))
    if CONDITIONS[rule.op]:
        tests.append(CONDITIONS[rule.op])
    return ("@id(%s)\npermit (principal, action == Action::%s, "
            "resource is %s)\nwhen { %s };\n"
            % (json.dumps(rule.id), json.dumps(rule.action),
               rule.resource_type, " && ".join(tests)))


def policies(rules) -> str:
    return FORBIDS + "\n" + "\n".join(permit(r) for r in rules)


def _subject(attributes: dict) -> dict:
    out = dict(attributes)
    if "level" in out:
        out["level"] = int(out["level"])
    return out


class CedarEngine:
    name = "cedar"
    notes = ("permit per rule, forbid per deny; facts in the context; "
             "policies parsed once (PolicySet)")

    def __init__(self, workload):
        import cedarpy

        self.cedarpy = cedarpy
        self.version = package_version("cedarpy")
        self.policies = cedarpy.PolicySet.from_str(policies(workload.rules))
        self.entities = cedarpy.Entities.from_json_str("[]")
        self.workload = workload
        self.now_ms = time.time_ns() // 1_000_000

    def inputs(self, requests) -> list:
        out = []
        for r in requests:
            out.append({
                "principal": {"type": "User", "id": r.subject_id},
                "action": {"type": "Action", "id": r.action},
                "resource": {"type": r.resource_type, "id": r.resource_id},
                "context": {
                    "license": self.workload.license_facts(r.account_id),
                    "subject": _subject(r.subject_attributes),
                    "roles": list(r.roles),
                    "resource_id": r.resource_id,
                    "call": r.context,
                    "now": self.now_ms,
                },
            })
        return out

    def decide(self, item) -> bool:
        result = self.cedarpy.is_authorized(item, self.policies,
                                            self.entities)
        return result.allowed

    def decide_batch(self, items) -> list:
        results = self.cedarpy.is_authorized_batch(items, self.policies,
                                                   self.entities)
        return [r.allowed for r in results]

    def close(self) -> None:
        pass


def build(name: str, workload):
    try:
        return CedarEngine(workload)
    except ImportError as exc:
        raise Unavailable("pip package cedarpy is not installed (%s)"
                          % exc) from exc
