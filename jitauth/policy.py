"""The policy language: plans and rules in YAML, compiled for the matchers.

``compile_policy`` validates a policy file and returns its compiled form, the
canonical JSON structure described in ``docs/internals.md``.  Every problem
is reported as a ``SourceError`` naming the file, the line and the field, so
an operator can fix a policy without guessing; the README documents the
language with examples.
"""

import ipaddress
import json
import math
import re
import socket
import zoneinfo
from dataclasses import dataclass

import yaml

from jitauth.grants import MAX_UNITS, PERIODS, SCOPES

COMPILED_FORMAT = 1

# XXX: a grant lives one day at the most; longer work must ask again (the
# licensing issue adds renewal up to a rule's maximum lifetime).
MAX_TTL_MS = 24 * 3600 * 1000
DEFAULT_TTL_MS = 60 * 1000

_ACTION = re.compile(r"\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")
_ATTR = re.compile(r"(context|subject|resource|license)\.[^\s]+|account\.id")
_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_CLOCK = re.compile(r"(\d\d):(\d\d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {"all": 0b1111111, "weekdays": 0b0011111, "weekends": 0b1100000}
# A grant's fields in the compiled form; deny rules keep these values.
_NO_GRANT = {"ttl_ms": 0, "max_lifetime_ms": 0, "limit": None,
             "scope": "account", "quota": None, "units": 1}
_COMPARISONS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "cidr")


class SourceError(ValueError):
    """A policy or license file is invalid; nothing of it was applied."""

    def __init__(self, path: str, line: int, field: str, message: str):
        super().__init__("%s:%d: %s: %s" % (path, line, field, message))
        self.path = path
        self.line = line
        self.field = field
        self.message = message


class _Map(dict):
    """A YAML mapping that remembers the line of each key."""

    line = 0
    key_lines: dict


class _Seq(list):
    """A YAML sequence that remembers the line of each item."""

    line = 0
    item_lines: list


class _Loader(yaml.SafeLoader):
    """Safe YAML that keeps line numbers and refuses duplicate keys.

    Plain scalars are typed as YAML 1.2 types them, not as YAML 1.1 does:
    ``NO``, ``on``, ``010``, ``12:30`` and ``0x1F`` stay the strings they
    are written as, rather than becoming false, true, 8, 750 and 31.  Only
    ``true`` and ``false`` are booleans, only decimal numbers without a
    leading zero are numbers, and ``null``, ``~`` or nothing is null.
    """


# YAML 1.2 core schema booleans and nulls; numbers as JSON writes them,
# so that a leading zero, a sign or a base prefix leaves a string.
_YAML_NULL = re.compile(r"null|Null|NULL|~|")
_YAML_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_YAML_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_YAML_FLOAT = re.compile(
    r"-?(0|[1-9][0-9]*)(\.[0-9]+([eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)")
# Python converts at most 4300 digits to an int by default.
_MAX_INT_DIGITS = 4300

_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
        ("null", _YAML_NULL, ["n", "N", "~", ""]),
        ("bool", _YAML_BOOL, ["t", "T", "f", "F"]),
        ("int", _YAML_INT, list("-0123456789")),
        ("float", _YAML_FLOAT, list("-0123456789"))):
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:" + _tag,
        re.compile("(?:%s)\\Z" % _pattern.pattern), _first)


def _scalar_error(node, problem: str) -> yaml.MarkedYAMLError:
    return yaml.constructor.ConstructorError(
        problem=problem, problem_mark=node.start_mark)


def _construct_bool(loader, node):
    value = loader.construct_scalar(node)
    if not _YAML_BOOL.fullmatch(value):
        raise _scalar_error(node, "%r is not a boolean (true or false)"
                            % value)
    return value.lower() == "true"


def _construct_int(loader, node):
    value = loader.construct_scalar(node)
    if not _YAML_INT.fullmatch(value):
        raise _scalar_error(node, "%r is not a decimal integer" % value)
    if len(value.lstrip("-")) > _MAX_INT_DIGITS:
        raise _scalar_error(node, "an integer of more than %d digits is "
                            "out of range (quote it if it is a string)"
                            % _MAX_INT_DIGITS)
    return int(value)


def _construct_float(loader, node):
    value = loader.construct_scalar(node)
    if not (_YAML_FLOAT.fullmatch(value) or _YAML_INT.fullmatch(value)):
        raise _scalar_error(node, "%r is not a decimal number" % value)
    return float(value)


def _construct_map(loader, node):
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.MarkedYAMLError(
                problem="keys must be strings, got %r" % (key,),
                problem_mark=key_node.start_mark)
        if key in out:
            raise yaml.MarkedYAMLError(
                problem="duplicate key %r" % key,
                problem_mark=key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_seq(loader, node):
    out = _Seq(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _construct_unsupported(loader, node):
    raise _scalar_error(node, "the tag %s is not supported (a policy holds "
                        "strings, numbers, booleans, lists and mappings)"
                        % node.tag.replace("tag:yaml.org,2002:", "!!"))


# PyYAML's own constructors for these fail on odd input with a traceback.
for _tag in ("timestamp", "binary", "omap", "pairs", "set"):
    _Loader.add_constructor("tag:yaml.org,2002:" + _tag,
                            _construct_unsupported)


@dataclass(slots=True)
class _Where:
    """The place being validated: the file, a field path and its line."""

    path: str
    field: str
    line: int

    def error(self, message: str) -> SourceError:
        return SourceError(self.path, self.line, self.field, message)

    def key(self, mapping: _Map, key: str) -> "_Where":
        line = mapping.key_lines.get(key, mapping.line)
        field = "%s.%s" % (self.field, key) if self.field else key
        return _Where(self.path, field, line)

    def item(self, seq: _Seq, index: int) -> "_Where":
        return _Where(self.path, "%s[%d]" % (self.field, index),
                      seq.item_lines[index])


def _mapping(where: _Where, value, allowed: tuple) -> _Map:
    if not isinstance(value, _Map):
        raise where.error("must be a mapping")
    for key in value:
        if key not in allowed:
            raise where.key(value, key).error(
                "unknown field (expected one of: %s)" % ", ".join(allowed))
    return value


def _string(where: _Where, value) -> str:
    if not isinstance(value, str) or not value:
        raise where.error("must be a non-empty string")
    return value


def _name(where: _Where, value) -> str:
    value = _string(where, value)
    if not _NAME.fullmatch(value):
        raise where.error("%r is not a valid name (letters, digits and "
                          "_ . : / -)" % value)
    return value


def _strings(where: _Where, value, check=_string) -> list:
    """A string or a list of strings, as a list."""
    if isinstance(value, _Seq):
        if not value:
            raise where.error("must not be empty")
        return [check(where.item(value, i), v) for i, v in enumerate(value)]
    return [check(where, value)]


def _duration_ms(where: _Where, value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value * 1000
    elif isinstance(value, str) and _DURATION.fullmatch(value):
        number, unit = _DURATION.fullmatch(value).groups()
        ms = int(number) * _UNIT_MS[unit]
    else:
        raise where.error("must be a duration such as 30s, 5m, 1h or 500ms")
    if not 1000 <= ms <= MAX_TTL_MS:
        raise where.error("must be between 1s and 24h")
    return ms


def parse_duration_ms(text: str) -> int:
    """A duration such as ``90s`` or ``5m`` in ms (1s to 24h)."""
    return _duration_ms(_Where("<argument>", "duration", 0), text)


def _action(where: _Where, value) -> str:
    value = _string(where, value)
    if not _ACTION.fullmatch(value):
        raise where.error("%r is not an action pattern (an action such as "
                          "reports.export, a prefix such as reports.*, or "
                          "*)" % value)
    return value


def _resource_id(where: _Where, value) -> str:
    value = _string(where, value)
    if "*" in value[:-1]:
        raise where.error("%r: * may only end an id pattern" % value)
    return value


def _minutes(where: _Where, value) -> int:
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise where.error("must be a time of day as \"HH:MM\"")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise where.error("%r is not a time of day" % value)
    return hours * 60 + minutes


def _days(where: _Where, value) -> int:
    if isinstance(value, str) and value in _DAY_SETS:
        return _DAY_SETS[value]
    mask = 0
    for day in _strings(where, value):
        if day not in _DAYS:
            raise where.error("%r is not a day (mon ... sun, weekdays, "
                              "weekends or all)" % day)
        mask |= 1 << _DAYS.index(day)
    return mask


class _Compiler:
    """Turns one parsed policy document into its compiled form."""

    def __init__(self, path: str):
        self.path = path
        self.timezones: list = []
        self.periods: dict = {}
        self.rule_lines: list = []

    def compile(self, document) -> dict:
        top = _Where(self.path, "", getattr(document, "line", 1))
        document = _mapping(top, document,
                            ("plans", "entitlements", "quotas", "rules"))

        periods = {}
        if document.get("quotas") is not None:
            periods = self.quotas(top.key(document, "quotas"),
                                  document["quotas"])
        if "plans" not in document:
            raise top.key(document, "plans").error(
                "is required: it maps plan names to their entitlements "
                "and limits")
        plans = self.plans(top.key(document, "plans"), document["plans"],
                           periods)
        known = {e for plan in plans.values() for e in plan["entitlements"]}
        if "entitlements" in document:
            where = top.key(document, "entitlements")
            known.update(_strings(where, document["entitlements"], _name))
        limits = {n for plan in plans.values() for n in plan["limits"]}
        self.periods = periods

        where = top.key(document, "rules")
        if "rules" not in document:
            raise where.error("is required: the list of rules that decide "
                              "requests")
        rules = document["rules"]
        if not isinstance(rules, _Seq) or not rules:
            raise where.error("must be a non-empty list of rules")
        seen = {}
        compiled = []
        for index, rule in enumerate(rules):
            item = where.item(rules, index)
            compiled.append(self.rule(item, rule, known, limits))
            self.rule_lines.append(item.line)
            rule_id = compiled[-1]["id"]
            if rule_id in seen:
                raise item.key(rule, "id").error(
                    "rule id %r is already used at line %d"
                    % (rule_id, seen[rule_id]))
            seen[rule_id] = item.line

        return {
            "format": COMPILED_FORMAT,
            "plans": plans,
            "quotas": periods,
            "timezones": self.timezones,
            "rules": compiled,
        }

    def quotas(self, where: _Where, quotas) -> dict:
        if not isinstance(quotas, _Map):
            raise where.error("must map quota names to their period")
        periods = {}
        for name, spec in quotas.items():
            at = where.key(quotas, name)
            _name(at, name)
            spec = _mapping(at, spec, ("period",))
            if spec.get("period") not in PERIODS:
                raise at.key(spec, "period").error(
                    "must be one of: %s (calendar periods in UTC)"
                    % ", ".join(PERIODS))
            periods[name] = spec["period"]
        return periods

    def plans(self, where: _Where, plans, periods: dict) -> dict:
        if not isinstance(plans, _Map) or not plans:
            raise where.error("must map plan names to their entitlements "
                              "and limits")
        compiled = {}
        for name, plan in plans.items():
            at = where.key(plans, name)
            _name(at, name)
            plan = _mapping(at, plan if plan is not None else _Map(),
                            ("entitlements", "limits", "quotas"))
            entitlements = []
            if plan.get("entitlements") is not None:
                entitlements = _strings(at.key(plan, "entitlements"),
                                        plan["entitlements"], _name)
            limits = self.numbers(at, plan, "limits")
            quotas = self.numbers(at, plan, "quotas")
            for quota in quotas:
                if quota not in periods:
                    raise at.key(plan, "quotas").key(plan["quotas"], quota) \
                        .error("quota %r has no period under quotas"
                               % quota)
            for limit in limits:
                if limit in periods:
                    raise at.key(plan, "limits").key(plan["limits"], limit) \
                        .error("%r is a quota; list it under quotas"
                               % limit)
            compiled[name] = {"entitlements": sorted(set(entitlements)),
                              "limits": limits, "quotas": quotas}
        return compiled

    def numbers(self, where: _Where, plan: _Map, key: str) -> dict:
        """A plan's map of limit or quota names to whole numbers."""
        if plan.get(key) is None:
            return {}
        at = where.key(plan, key)
        if not isinstance(plan[key], _Map):
            raise at.error("must map names to whole numbers")
        out = {}
        for name, value in plan[key].items():
            vw = at.key(plan[key], name)
            _name(vw, name)
            if (not isinstance(value, int) or isinstance(value, bool)
                    or not 0 <= value < 2**63):
                raise vw.error("must be a whole number >= 0")
            out[name] = value
        return out

    def rule(self, where: _Where, rule, known: set, limits: set) -> dict:
        rule = _mapping(where, rule, (
            "id", "effect", "description", "action", "actions", "resource",
            "roles", "entitlement", "when", "grant"))
        if "id" not in rule:
            raise where.error("a rule needs an id")
        rule_id = _name(where.key(rule, "id"), rule["id"])

        effect = rule.get("effect")
        if effect not in ("allow", "deny"):
            raise where.key(rule, "effect").error("must be allow or deny")

        if ("action" in rule) == ("actions" in rule):
            raise where.error("give exactly one of action or actions")
        key = "action" if "action" in rule else "actions"
        actions = _strings(where.key(rule, key), rule[key], _action)

        types, ids = ["*"], ["*"]
        if "resource" in rule:
            rw = where.key(rule, "resource")
            resource = _mapping(rw, rule["resource"], ("type", "id"))
            if "type" in resource:
                types = _strings(rw.key(resource, "type"), resource["type"])
            if "id" in resource:
                ids = _strings(rw.key(resource, "id"), resource["id"],
                               _resource_id)

        roles = []
        if rule.get("roles") is not None:
            roles = _strings(where.key(rule, "roles"), rule["roles"])

        entitlement = None
        if rule.get("entitlement") is not None:
            ew = where.key(rule, "entitlement")
            if effect == "deny":
                raise ew.error("deny rules cannot require an entitlement")
            entitlement = _name(ew, rule["entitlement"])
            if entitlement not in known:
                raise ew.error("entitlement %r is not granted by any plan "
                               "nor listed under entitlements" % entitlement)

        conditions = []
        if rule.get("when") is not None:
            ww = where.key(rule, "when")
            if not isinstance(rule["when"], _Seq):
                raise ww.error("must be a list of conditions")
            for i, condition in enumerate(rule["when"]):
                conditions.append(self.condition(ww.item(rule["when"], i),
                                                 condition))

        grant = dict(_NO_GRANT)
        if effect == "deny" and "grant" in rule:
            raise where.key(rule, "grant").error("deny rules issue no grant")
        if effect == "allow":
            grant = self.grant(where.key(rule, "grant"), rule.get("grant"),
                               limits)

        return {
            "id": rule_id,
            "effect": effect,
            "actions": actions,
            "resource_types": types,
            "resource_ids": ids,
            "roles": roles,
            "entitlement": entitlement,
            "when": conditions,
            **grant,
        }

    def grant(self, where: _Where, grant, limits: set) -> dict:
        out = dict(_NO_GRANT, ttl_ms=DEFAULT_TTL_MS)
        if grant is None:
            out["max_lifetime_ms"] = DEFAULT_TTL_MS
            return out
        grant = _mapping(where, grant, ("ttl", "max_lifetime", "limit",
                                        "scope", "quota", "units"))
        if "ttl" in grant:
            out["ttl_ms"] = _duration_ms(where.key(grant, "ttl"),
                                         grant["ttl"])
        out["max_lifetime_ms"] = out["ttl_ms"]
        if "max_lifetime" in grant:
            mw = where.key(grant, "max_lifetime")
            out["max_lifetime_ms"] = _duration_ms(mw, grant["max_lifetime"])
            if out["max_lifetime_ms"] < out["ttl_ms"]:
                raise mw.error("must be at least the ttl")

        if grant.get("limit") is not None:
            lw = where.key(grant, "limit")
            out["limit"] = _name(lw, grant["limit"])
            if out["limit"] not in limits:
                raise lw.error("limit %r is not defined by any plan"
                               % out["limit"])
        if "scope" in grant:
            sw = where.key(grant, "scope")
            if out["limit"] is None:
                raise sw.error("a scope needs a limit")
            if grant["scope"] not in SCOPES:
                raise sw.error("must be one of: %s" % ", ".join(SCOPES))
            out["scope"] = grant["scope"]

        if grant.get("quota") is not None:
            qw = where.key(grant, "quota")
            out["quota"] = _name(qw, grant["quota"])
            if out["quota"] not in self.periods:
                raise qw.error("quota %r is not defined under quotas"
                               % out["quota"])
        if "units" in grant:
            uw = where.key(grant, "units")
            units = grant["units"]
            if out["quota"] is None:
                raise uw.error("units need a quota")
            if (not isinstance(units, int) or isinstance(units, bool)
                    or not 1 <= units <= MAX_UNITS):
                raise uw.error("must be a whole number from 1 to %d"
                               % MAX_UNITS)
            out["units"] = units
        return out

    def condition(self, where: _Where, condition) -> dict:
        if isinstance(condition, _Map) and "time" in condition:
            return self.time_window(where, condition)

        condition = _mapping(where, condition, ("attr",) + _COMPARISONS)
        if "attr" not in condition:
            raise where.error("a condition needs attr (such as context.env) "
                              "or time")
        attr = _string(where.key(condition, "attr"), condition["attr"])
        if not _ATTR.fullmatch(attr):
            raise where.key(condition, "attr").error(
                "%r is not an attribute (context.K, subject.K, resource.K, "
                "license.K or account.id)" % attr)
        ops = [k for k in condition if k != "attr"]
        if len(ops) != 1:
            raise where.error("give exactly one comparison of: %s"
                              % ", ".join(_COMPARISONS))
        op = ops[0]
        vw = where.key(condition, op)
        value = condition[op]

        if op in ("eq", "ne"):
            value = self.scalar(vw, value)
        elif op in ("in", "not_in"):
            if not isinstance(value, _Seq) or not value:
                raise vw.error("must be a non-empty list")
            value = [self.scalar(vw.item(value, i), v)
                     for i, v in enumerate(value)]
        elif op == "cidr":
            value = _strings(vw, value, self.network)
        else:
            value = self.number(vw, value)
        return {"attr": attr, "op": op, "value": value}

    def number(self, where: _Where, value) -> float:
        """A literal of gt, gte, lt or lte: compared as a double."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error("must be a number, written in decimal (such "
                              "as 3, -2.5 or 1e3)")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise where.error("is out of range: a number must convert to a "
                              "finite double (|x| < 1.8e308)")
        return number

    def scalar(self, where: _Where, value) -> str:
        """A literal compared with an attribute, which is always a string."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, str)):
            return str(value)
        raise where.error("must be a string or a whole number")

    def network(self, where: _Where, value) -> str:
        """A network as the matchers read it: inet_pton address, prefix."""
        text = _string(where, value)
        address = text.partition("/")[0]
        if "%" in address:
            raise where.error("%r: a scope id (%%...) is not allowed in a "
                              "network" % text)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            socket.inet_pton(family, address)
        except (OSError, ValueError):
            raise where.error("%r: %r is not an IPv4 or IPv6 address"
                              % (text, address)) from None
        try:
            return str(ipaddress.ip_network(text))
        except ValueError as exc:
            raise where.error(str(exc)) from None

    def time_window(self, where: _Where, condition: _Map) -> dict:
        _mapping(where, condition, ("time",))
        tw = where.key(condition, "time")
        window = _mapping(tw, condition["time"],
                          ("from", "to", "days", "tz"))
        for required in ("from", "to", "tz"):
            if required not in window:
                raise tw.error("a time window needs from, to and tz")
        start = _minutes(tw.key(window, "from"), window["from"])
        end = _minutes(tw.key(window, "to"), window["to"])
        if start == end:
            raise tw.key(window, "to").error("must differ from from")
        days = _DAY_SETS["all"]
        if "days" in window:
            days = _days(tw.key(window, "days"), window["days"])
        tz = _string(tw.key(window, "tz"), window["tz"])
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise tw.key(window, "tz").error(
                "%r is not a known time zone (use names such as "
                "Europe/Berlin or UTC)" % tz) from None
        if tz not in self.timezones:
            self.timezones.append(tz)
        return {"op": "time", "from": start, "to": end, "days": days,
                "tz": self.timezones.index(tz)}


def check_matchers(policy: dict, path: str, rule_lines=()) -> None:
    """Build both matchers from a compiled policy, as every worker will.

    A policy the compiler accepts but a matcher cannot be built from
    would answer every request with an error; this refuses it instead.
    Raises ``SourceError`` naming the first rule that cannot be built (and
    its line in ``rule_lines``), or the field ``rules`` at line 0.
    """
    from jitauth._core import Matcher
    from jitauth.reference import ReferenceMatcher

    # The stored form is JSON: check exactly what a worker will read.
    policy = json.loads(json.dumps(policy, sort_keys=True))
    failure = _matcher_failure(policy, Matcher, ReferenceMatcher)
    if failure is None:
        return

    for index, rule in enumerate(policy.get("rules", ())):
        alone = _matcher_failure(dict(policy, rules=[rule]), Matcher,
                                 ReferenceMatcher)
        if alone is not None:
            line = rule_lines[index] if index < len(rule_lines) else 0
            raise SourceError(path, line, "rules[%d]" % index,
                              "no matcher can be built from this rule: %s"
                              % alone)
    raise SourceError(path, 0, "rules", "no matcher can be built from "
                      "this policy: %s" % failure)


def _matcher_failure(policy: dict, *matchers) -> str | None:
    for matcher in matchers:
        try:
            matcher(policy, 0)
        except Exception as exc:  # noqa: BLE001 - any failure refuses it
            return "%s: %s" % (type(exc).__name__, exc)
    return None


# XXX: a policy (or test suite) file is read whole into memory; larger
# files are refused rather than read without bound.
MAX_SOURCE_BYTES = 16 << 20


def read_source(path: str) -> str:
    """The text of a policy or suite file, as UTF-8, at most
    ``MAX_SOURCE_BYTES``; ``SourceError`` otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
        if len(data) > MAX_SOURCE_BYTES:
            raise SourceError(path, 0, "file", "larger than %d bytes"
                              % MAX_SOURCE_BYTES)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(path, 0, "file", str(exc)) from None


def compile_policy(path: str, text: str | None = None) -> dict:
    """Validate the policy file at ``path`` and return its compiled form.

    Raises ``SourceError`` (file, line, field) for any problem, including
    a policy that neither matcher could be built from.
    """
    if text is None:
        text = read_source(path)

    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise SourceError(path, line, "yaml", exc.problem or str(exc)) \
            from None
    except yaml.YAMLError as exc:
        raise SourceError(path, 0, "yaml", str(exc)) from None
    except RecursionError:
        raise SourceError(path, 0, "yaml", "nested too deeply") from None

    if document is None:
        raise SourceError(path, 1, "file", "the policy is empty")
    compiler = _Compiler(path)
    policy = compiler.compile(document)

    check_matchers(policy, path, compiler.rule_lines)
    return policy
