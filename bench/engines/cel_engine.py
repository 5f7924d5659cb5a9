"""CEL (common-expression-language): one compiled expression per action.

CEL has no notion of a rule set, so the translation is a dispatch table:
each action maps to one compiled program that holds the license checks,
the three deny rules and the action's allow rule.  An action with no
program is denied.  Plan entitlements are inlined as the list of plans
that include them; each request is a dict of variables.
"""

import json
import time

from bench import workload as w
from bench.engines import Unavailable, package_version


def _list(items) -> str:
    return "[%s]" % ", ".join(json.dumps(i) for i in items)


COMMON = (
    'license.status == "active" && now >= license.valid_from'
    ' && now < license.valid_until'
    ' && !(has(context.country) && context.country in %(embargoed)s)'
    ' && !(has(license.attributes.data_residency)'
    ' && license.attributes.data_residency == "eu"'
    ' && has(context.region) && !(context.region in %(eu)s))'
    ' && !(has(subject.locked) && subject.locked == "true")'
) % {"embargoed": _list(w.EMBARGOED), "eu": _list(w.EU_REGIONS)}

CONDITIONS = {
    "view": "true",
    "edit": "has(context.env) && context.env in %s" % _list(w.ENVS),
    "export": ('has(subject.level) && double(subject.level) >= %d.0'
               ' && has(context.env) && context.env == "prod"'
               % w.MIN_EXPORT_LEVEL),
    "share": ('has(license.attributes.sharing)'
              ' && license.attributes.sharing == "on"'),
    "admin": 'has(subject.mfa) && subject.mfa == "true"',
}


def expression(rule) -> str:
    parts = [COMMON, "resource.type == %s" % json.dumps(rule.resource_type)]
    if rule.id_prefix:
        parts.append("resource.id.startsWith(%s)"
                     % json.dumps(rule.id_prefix))
    if rule.roles:
        parts.append("(%s)" % " || ".join(
            "%s in roles" % json.dumps(r) for r in rule.roles))
    parts.append("(license.plan in %s || %s in license.entitlements)"
                 % (_list(rule.plans), json.dumps(rule.entitlement)))
    parts.append("(%s)" % CONDITIONS[rule.op])
    return " && ".join(parts)


class CelEngine:
    name = "cel"
    notes = ("one compiled expression per action; license facts as "
             "variables")

    def __init__(self, workload):
        import cel

        self.version = package_version("common-expression-language")
        self.programs = {r.action: cel.compile(expression(r))
                         for r in workload.rules}
        self.workload = workload
        self.now_ms = time.time_ns() // 1_000_000

    def inputs(self, requests) -> list:
        out = []
        for r in requests:
            variables = {
                "license": self.workload.license_facts(r.account_id),
                "subject": r.subject_attributes,
                "roles": list(r.roles),
                "resource": {"type": r.resource_type, "id": r.resource_id},
                "context": r.context,
                "now": self.now_ms,
            }
            out.append((self.programs.get(r.action), variables))
        return out

    def decide(self, item) -> bool:
        program, variables = item
        return program is not None and program.execute(variables) is True

    def close(self) -> None:
        pass


def build(name: str, workload):
    import importlib

    try:
        module = importlib.import_module("cel")
    except ImportError as exc:
        raise Unavailable("pip package common-expression-language is not "
                          "installed (%s)" % exc) from exc
    if not hasattr(module, "compile"):
        # xds-protos ships an empty cel/__init__.py (for cel.expr) that
        # replaces this package's when installed after it.
        raise Unavailable("the cel module at %s is not common-expression-"
                          "language's (another package, such as "
                          "xds-protos, overwrote cel/__init__.py); run pip "
                          "install --force-reinstall --no-deps "
                          "common-expression-language" % module.__file__)
    try:
        return CelEngine(workload)
    except ImportError as exc:
        raise Unavailable("pip package common-expression-language is not "
                          "installed (%s)" % exc) from exc
