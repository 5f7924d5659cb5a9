"""Cerbos: the rule set as resource policies, requests as CheckResources.

One resource policy per resource type (``kind<a>``) holds that area's five
allow rules and, repeated, the deny rules (Cerbos denies override
allows, as jitauth's do).  Cerbos keeps no data of its own, so the caller
sends the license facts with each request, as principal attributes next
to the subject's; the call's context (env, country, region) travels as
principal attribute ``call``, since CheckResources has no request context.
License validity is checked against Cerbos' own clock (``now()``).
"""

import json
import os

from bench import workload as w

POLICY_VERSION = "default"


def _list(items) -> str:
    return "[%s]" % ", ".join(json.dumps(i) for i in items)


DENIES = [
    ("license",
     '!(P.attr.license.status == "active"'
     ' && P.attr.license.valid_from <= int(now()) * 1000'
     ' && int(now()) * 1000 < P.attr.license.valid_until)'),
    ("embargo",
     'has(P.attr.call.country) && P.attr.call.country in %s'
     % _list(w.EMBARGOED)),
    ("eu-residency",
     'has(P.attr.license.attributes.data_residency)'
     ' && P.attr.license.attributes.data_residency == "eu"'
     ' && has(P.attr.call.region) && !(P.attr.call.region in %s)'
     % _list(w.EU_REGIONS)),
    ("locked-subject",
     'has(P.attr.subject.locked) && P.attr.subject.locked == "true"'),
]

CONDITIONS = {
    "view": [],
    "edit": ['has(P.attr.call.env) && P.attr.call.env in %s'
             % _list(w.ENVS)],
    "export": ['has(P.attr.subject.level)'
               ' && double(P.attr.subject.level) >= %d.0'
               % w.MIN_EXPORT_LEVEL,
               'has(P.attr.call.env) && P.attr.call.env == "prod"'],
    "share": ['has(P.attr.license.attributes.sharing)'
              ' && P.attr.license.attributes.sharing == "on"'],
    "admin": ['has(P.attr.subject.mfa) && P.attr.subject.mfa == "true"'],
}


def _allow(rule) -> dict:
    tests = []
    if rule.id_prefix:
        tests.append("R.id.startsWith(%s)" % json.dumps(rule.id_prefix))
    tests.append("(P.attr.license.plan in %s || %s in "
                 "P.attr.license.entitlements)"
                 % (_list(rule.plans), json.dumps(rule.entitlement)))
    tests += CONDITIONS[rule.op]
    return {
        "name": rule.id,
        "actions": [rule.action],
        "effect": "EFFECT_ALLOW",
        "roles": list(rule.roles) or ["*"],
        "condition": {"match": {"all": {"of": [{"expr": t}
                                               for t in tests]}}},
    }


def write_policies(directory: str, rules: list) -> int:
    """One YAML file per resource type; returns how many were written."""
    os.makedirs(directory, exist_ok=True)
    by_kind = {}
    for rule in rules:
        by_kind.setdefault(rule.resource_type, []).append(rule)
    denies = [{"name": name, "actions": ["*"], "effect": "EFFECT_DENY",
               "roles": ["*"], "condition": {"match": {"expr": expr}}}
              for name, expr in DENIES]
    for kind, kind_rules in by_kind.items():
        policy = {
            "apiVersion": "api.cerbos.dev/v1",
            "resourcePolicy": {
                "version": POLICY_VERSION,
                "resource": kind,
                "rules": denies + [_allow(r) for r in kind_rules],
            },
        }
        # JSON is YAML; Cerbos reads either.
        with open(os.path.join(directory, "%s.yaml" % kind), "w",
                  encoding="utf-8") as f:
            json.dump(policy, f, indent=1)
    return len(by_kind)


def check_request(workload, r, index: int):
    """The CheckResources request of one workload request."""
    from cerbos.engine.v1 import engine_pb2
    from cerbos.request.v1 import request_pb2

    attr = {
        "license": workload.license_facts(r.account_id),
        "subject": r.subject_attributes,
        "call": r.context,
        "account": r.account_id,
    }
    principal = engine_pb2.Principal(id=r.subject_id, roles=list(r.roles),
                                     policy_version=POLICY_VERSION)
    for key, item in attr.items():
        principal.attr[key].CopyFrom(_value(item))
    resource = engine_pb2.Resource(kind=r.resource_type, id=r.resource_id,
                                   policy_version=POLICY_VERSION)
    return request_pb2.CheckResourcesRequest(
        request_id="r%d" % index,
        principal=principal,
        resources=[request_pb2.CheckResourcesRequest.ResourceEntry(
            actions=[r.action], resource=resource)])


def _value(obj):
    from google.protobuf import json_format, struct_pb2

    v = struct_pb2.Value()
    json_format.ParseDict(obj, v)
    return v


def allowed(response_bytes: bytes, action: str) -> bool:
    from cerbos.effect.v1 import effect_pb2
    from cerbos.response.v1 import response_pb2

    response = response_pb2.CheckResourcesResponse.FromString(
        response_bytes)
    effect = response.results[0].actions.get(action)
    return effect == effect_pb2.EFFECT_ALLOW
