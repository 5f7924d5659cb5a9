"""Casbin (pycasbin): one policy line per rule, deny overrides allow.

Casbin's matcher language compares strings; set membership, prefixes and
the per-rule conditions are custom functions registered on the enforcer,
which is how Casbin is extended for attribute-based rules.  The license
checks and the three deny rules are deny lines.  Casbin evaluates the
matcher against every policy line, so its cost grows with the rule count.
"""

import os
import time

from bench import workload as w
from bench.engines import Unavailable, package_version

MODEL = """\
[request_definition]
r = sub, obj, act, env

[policy_definition]
p = act, rtype, idprefix, roles, ent, plans, op, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.act == "*" || r.act == p.act) \
&& targets(r.obj, p.rtype, p.idprefix) && roleMatch(r.sub, p.roles) \
&& entitled(r.env, p.ent, p.plans) && holds(r.sub, r.env, p.op)
"""

DENY_LINES = ("license", "embargo", "eu-residency", "locked-subject")


def policy_lines(rules) -> list:
    lines = ["p, *, *, -, -, -, -, %s, deny" % op for op in DENY_LINES]
    for rule in rules:
        lines.append("p, %s, %s, %s, %s, %s, %s, %s, allow" % (
            rule.action, rule.resource_type, rule.id_prefix or "-",
            "|".join(rule.roles) or "-", rule.entitlement,
            "|".join(rule.plans), rule.op))
    return lines


def targets(obj, rtype, idprefix) -> bool:
    return ((rtype == "*" or obj["type"] == rtype)
            and (idprefix == "-" or obj["id"].startswith(idprefix)))


def role_match(sub, roles) -> bool:
    return roles == "-" or any(r in sub["roles"] for r in roles.split("|"))


def entitled(env, ent, plans) -> bool:
    if ent == "-":
        return True
    lic = env["license"]
    return lic["plan"] in plans.split("|") or ent in lic["entitlements"]


def holds(sub, env, op) -> bool:
    lic, ctx, attrs = env["license"], env["context"], sub["attributes"]
    if op == "view":
        return True
    if op == "edit":
        return ctx.get("env") in w.ENVS
    if op == "export":
        level = attrs.get("level")
        return (level is not None and float(level) >= w.MIN_EXPORT_LEVEL
                and ctx.get("env") == "prod")
    if op == "share":
        return lic["attributes"].get("sharing") == "on"
    if op == "admin":
        return attrs.get("mfa") == "true"
    if op == "license":
        return not (lic["status"] == "active"
                    and lic["valid_from"] <= env["now"] < lic["valid_until"])
    if op == "embargo":
        return ctx.get("country") in w.EMBARGOED
    if op == "eu-residency":
        region = ctx.get("region")
        return (lic["attributes"].get("data_residency") == "eu"
                and region is not None and region not in w.EU_REGIONS)
    if op == "locked-subject":
        return attrs.get("locked") == "true"
    raise ValueError("unknown op %r" % op)


class CasbinEngine:
    name = "casbin"
    notes = ("policy line per rule, custom matcher functions, "
             "deny-override effect")

    def __init__(self, workload):
        import casbin

        self.version = package_version("pycasbin")
        root = os.path.dirname(workload.policy_path)
        model_path = os.path.join(root, "casbin_model.conf")
        policy_path = os.path.join(root, "casbin_policy.csv")
        with open(model_path, "w", encoding="utf-8") as f:
            f.write(MODEL)
        with open(policy_path, "w", encoding="utf-8") as f:
            f.write("\n".join(policy_lines(workload.rules)) + "\n")
        self.enforcer = casbin.Enforcer(model_path, policy_path)
        self.enforcer.add_function("targets", targets)
        self.enforcer.add_function("roleMatch", role_match)
        self.enforcer.add_function("entitled", entitled)
        self.enforcer.add_function("holds", holds)
        self.workload = workload
        self.now_ms = time.time_ns() // 1_000_000

    def inputs(self, requests) -> list:
        return [({"id": r.subject_id, "roles": r.roles,
                  "attributes": r.subject_attributes},
                 {"type": r.resource_type, "id": r.resource_id},
                 r.action,
                 {"license": self.workload.license_facts(r.account_id),
                  "context": r.context, "now": self.now_ms})
                for r in requests]

    def decide(self, item) -> bool:
        return self.enforcer.enforce(*item)

    def close(self) -> None:
        pass


def build(name: str, workload):
    import logging

    # pycasbin logs every policy line it loads at INFO.
    logging.getLogger("casbin").setLevel(logging.WARNING)
    try:
        return CasbinEngine(workload)
    except ImportError as exc:
        raise Unavailable("pip package pycasbin is not installed (%s)"
                          % exc) from exc
