"""The reference matcher: docs/internals.md written out in plain Python.

``ReferenceMatcher`` is the yardstick for the compiled ``jitauth._core.
Matcher``: both take the same compiled policy and give the same
``(reason, rule_index, limit_max)`` for every input, which the property
tests check.  This one favours being obviously right over being fast: it
reads the whole license record, then walks every rule in file order.

Strings are compared as UTF-8 bytes on both sides (``surrogatepass``, so
that every ``str`` has exactly one encoding): for valid text, equal bytes
means equal code points, and a license record, which holds bytes, is never
decoded.
"""

import re
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jitauth import clock
from jitauth.licenses import FORMAT_VERSION, CorruptRecord
from jitauth.model import LicenseStatus, Reason

# [0-9] is ASCII only, unlike \d.
_NUMBER = re.compile(rb"-?[0-9]+(\.[0-9]+)?")
MAX_NUMBER_CHARS = 32

_MINUTE_MS = 60_000
_DAY_MS = 86_400_000
_THURSDAY = 3  # 1970-01-01, day 0, counting Monday as 0

# LMDB's default maximum key size; no longer account id can be stored.
_MAX_KEY_BYTES = 511

_HEADER = struct.Struct("<BBHHHqq")
_U16 = struct.Struct("<H")
_I64 = struct.Struct("<q")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@dataclass(slots=True)
class LicenseRecord:
    """A license record as stored; every string is raw bytes.

    Where a name occurs twice (a limit, an attribute key), the first one
    counts.
    """

    status: int
    valid_from: int
    valid_until: int
    plan: bytes
    entitlements: list
    limits: list
    attributes: list

    def limit(self, name: bytes) -> int | None:
        for key, value in self.limits:
            if key == name:
                return value
        return None

    def attribute(self, key: bytes) -> bytes | None:
        for name, value in self.attributes:
            if name == key:
                return value
        return None


def read_record(record: bytes) -> LicenseRecord:
    """Parse a binary license record; raise ``CorruptRecord`` if malformed.

    Corrupt means what docs/internals.md says: a version other than 1, or
    fewer bytes than the counts claim.  Any other status than active is a
    status (the matcher answers LICENSE_INACTIVE), and bytes are not
    checked for valid UTF-8.
    """
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        if pos + size > len(record):
            raise CorruptRecord("license record is truncated")
        chunk = record[pos:pos + size]
        pos += size
        return chunk

    def text() -> bytes:
        (size,) = _U16.unpack(take(2))
        return take(size)

    (version, status, n_ent, n_lim, n_attr, valid_from, valid_until
     ) = _HEADER.unpack(take(_HEADER.size))
    if version != FORMAT_VERSION:
        raise CorruptRecord("license record has format %d" % version)

    plan = text()
    entitlements = [text() for _ in range(n_ent)]
    limits = []
    for _ in range(n_lim):
        name = text()
        (value,) = _I64.unpack(take(8))
        limits.append((name, value))
    attributes = []
    for _ in range(n_attr):
        key = text()
        attributes.append((key, text()))
    return LicenseRecord(status, valid_from, valid_until, plan,
                         entitlements, limits, attributes)


def _action_matches(pattern: str, action: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return action.startswith(pattern[:-1])
    return pattern == action


def _resource_id_matches(pattern: str, resource_id: str) -> bool:
    if pattern.endswith("*"):
        return resource_id.startswith(pattern[:-1])
    return pattern == resource_id


def _number(value: bytes) -> float | None:
    if len(value) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(value):
        return None
    return float(value)


def _address(value: bytes) -> tuple | None:
    """``(family, packed)`` when ``value`` parses as inet_pton parses it."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
    return None


def _network(text: str) -> tuple:
    """``(family, packed address, prefix bits)`` of ``a.b.c.d/n``."""
    address, _, bits = text.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    size = len(packed) * 8
    prefix = int(bits) if bits else size
    if not 0 <= prefix <= size:
        raise ValueError("network %r: prefix out of range" % text)
    return family, packed, prefix


def _in_network(address: tuple, network: tuple) -> bool:
    family, packed = address
    net_family, net_packed, bits = network
    if family != net_family:
        return False
    size = len(packed) * 8
    mask = ((1 << bits) - 1) << (size - bits)
    return (int.from_bytes(packed, "big") & mask
            == int.from_bytes(net_packed, "big") & mask)


def _get(mapping: Mapping | None, key: str):
    return None if mapping is None else mapping.get(key)


def _local_day_minute(now_ms: int, offset: int) -> tuple:
    """Weekday (Monday 0) and minute of day at ``now_ms`` plus ``offset``."""
    day, ms = divmod(now_ms + offset * _MINUTE_MS, _DAY_MS)
    return (day + _THURSDAY) % 7, ms // _MINUTE_MS


class _Condition:
    """One entry of a rule's ``when``, with its literals prepared."""

    def __init__(self, spec: dict):
        self.op = spec["op"]
        if self.op == "time":
            self.start = spec["from"]
            self.end = spec["to"]
            self.days = spec["days"]
            self.tz = spec["tz"]
            return

        self.source, _, self.key = spec["attr"].partition(".")
        value = spec["value"]
        if self.op in ("eq", "ne"):
            self.value = _utf8(value)
        elif self.op in ("in", "not_in"):
            self.value = [_utf8(v) for v in value]
        elif self.op == "cidr":
            self.value = [_network(v) for v in value]
        elif self.op in ("gt", "gte", "lt", "lte"):
            self.value = float(value)
        else:
            raise ValueError("unknown condition op %r" % self.op)


class _Rule:
    def __init__(self, index: int, spec: dict):
        self.index = index
        self.id = spec["id"]
        self.effect = spec["effect"]
        self.deny = spec["effect"] == "deny"
        self.actions = list(spec["actions"])
        self.resource_types = list(spec["resource_types"])
        self.resource_ids = list(spec["resource_ids"])
        self.roles = set(spec["roles"])
        self.entitlement = (None if spec.get("entitlement") is None
                            else _utf8(spec["entitlement"]))
        self.conditions = [_Condition(c) for c in spec.get("when", ())]
        self.ttl_ms = int(spec.get("ttl_ms", 0))
        self.limit = spec.get("limit")
        self.limit_name = None if self.limit is None else _utf8(self.limit)


@dataclass(slots=True)
class _Request:
    account_id: str
    subject_id: str
    roles: Sequence
    subject_attributes: Mapping
    action: str
    resource_type: str
    resource_id: str
    resource_attributes: Mapping
    context: Mapping
    now_ms: int
    tz_offsets: Sequence


class ReferenceMatcher:
    """Decide requests against one revision of the compiled policy.

    ``policy`` is the canonical JSON of docs/internals.md, already parsed;
    ``revision`` is the number it is stored under.
    """

    def __init__(self, policy: dict, revision: int):
        if policy.get("format") != 1:
            raise ValueError("compiled policy format %r is not 1"
                             % policy.get("format"))
        self.revision = revision
        self.timezones = list(policy.get("timezones", ()))
        self._rules = [_Rule(i, r) for i, r in enumerate(policy["rules"])]
        self.rule_ids = [rule.id for rule in self._rules]
        self._plans = {}
        for name, plan in policy.get("plans", {}).items():
            self._plans[_utf8(name)] = (
                {_utf8(e) for e in plan.get("entitlements", ())},
                {_utf8(k): v for k, v in plan.get("limits", {}).items()})
        times = [c for rule in self._rules for c in rule.conditions
                 if c.op == "time"]
        if any(not 0 <= c.tz < len(self.timezones) for c in times):
            raise ValueError("a time condition names an unknown zone")
        self.has_time_conditions = bool(times)

    def rule_info(self, index: int) -> tuple:
        """``(id, effect, ttl_ms, limit)`` of the rule at ``index``."""
        rule = self._rules[index]
        return rule.id, rule.effect, rule.ttl_ms, rule.limit

    def match(self, license, account_id, subject_id, roles,
              subject_attributes, action, resource_type, resource_id,
              resource_attributes, context, now_ms, tz_offsets=None):
        """Decide one request; return ``(reason, rule_index, limit_max)``.

        ``license`` is the binary record or None.  ``tz_offsets`` gives the
        UTC offset in minutes of each of the policy's ``timezones`` at
        ``now_ms``; when None it is computed with ``jitauth.clock``.
        Raises ``CorruptRecord`` for a malformed record.
        """
        if tz_offsets is None:
            if self.has_time_conditions:
                tz_offsets = clock.tz_offsets(self.timezones, now_ms)
            else:
                tz_offsets = ()
        elif len(tz_offsets) < len(self.timezones):
            raise ValueError("need one offset per time zone of the policy")

        if license is None:
            return Reason.NO_LICENSE, -1, -1
        record = read_record(bytes(license))

        if record.status != LicenseStatus.ACTIVE:
            return Reason.LICENSE_INACTIVE, -1, -1
        if now_ms < record.valid_from:
            return Reason.LICENSE_NOT_YET_VALID, -1, -1
        if now_ms >= record.valid_until:
            return Reason.LICENSE_EXPIRED, -1, -1

        request = _Request(account_id, subject_id, roles, subject_attributes,
                           action, resource_type, resource_id,
                           resource_attributes, context, now_ms, tz_offsets)
        allowed = unentitled = None
        for rule in self._rules:
            if not self._is_candidate(rule, request):
                continue
            if rule.deny:
                if self._conditions_hold(rule, record, request):
                    return Reason.DENIED_BY_RULE, rule.index, -1
                continue
            if allowed is not None:
                continue
            if not self._entitled(rule, record):
                if unentitled is None:
                    unentitled = rule
                continue
            if self._conditions_hold(rule, record, request):
                allowed = rule

        if allowed is not None:
            return (Reason.ALLOWED_BY_RULE, allowed.index,
                    self._limit_max(allowed, record))
        if unentitled is not None:
            return Reason.NOT_ENTITLED, unentitled.index, -1
        return Reason.NO_MATCHING_RULE, -1, -1

    def match_stored(self, env, meta_dbi, licenses_dbi, account_id,
                     subject_id, roles, subject_attributes, action,
                     resource_type, resource_id, resource_attributes,
                     context, now_ms):
        """Read the revision and the account's license, then ``match``.

        Returns ``(0, -1, -1)`` when the stored revision is not this
        matcher's: the caller loads the new one and asks again.
        """
        from jitauth._core import StoreError

        key = _utf8(account_id)
        with env.begin() as txn:
            stored = txn.get(meta_dbi, b"revision")
            if stored is None or len(stored) != 8:
                raise StoreError("meta/revision is missing or malformed")
            if int.from_bytes(stored, "big") != self.revision:
                return 0, -1, -1
            license = (txn.get(licenses_dbi, key)
                       if 0 < len(key) <= _MAX_KEY_BYTES else None)

        return self.match(license, account_id, subject_id, roles,
                          subject_attributes, action, resource_type,
                          resource_id, resource_attributes, context, now_ms)

    def explain(self, license, account_id, subject_id, roles,
                subject_attributes, action, resource_type, resource_id,
                resource_attributes, context, now_ms, tz_offsets=None):
        """The steps ``match`` takes, one readable sentence each.

        Lists the license checks, then every candidate rule (one whose
        action, resource and roles match) with the first condition that
        failed, and the outcome.  Slow, for operators: never on the hot
        path unless a request asks for it.
        """
        reason, index, limit_max = self.match(
            license, account_id, subject_id, roles, subject_attributes,
            action, resource_type, resource_id, resource_attributes,
            context, now_ms, tz_offsets)
        if tz_offsets is None:
            tz_offsets = clock.tz_offsets(self.timezones, now_ms)
        steps = ["policy revision %d, %d rules" % (self.revision,
                                                    len(self._rules))]

        if license is None:
            steps.append("license: account %s has none" % account_id)
            return steps + [_verdict(reason, None)]
        record = read_record(bytes(license))
        steps.append("license: plan %s, %s, valid %s to %s"
                     % (record.plan.decode("utf-8", "replace"),
                        _status_name(record.status),
                        _moment(record.valid_from),
                        _moment(record.valid_until)))
        if reason in (Reason.LICENSE_INACTIVE, Reason.LICENSE_NOT_YET_VALID,
                      Reason.LICENSE_EXPIRED):
            return steps + [_verdict(reason, None)]

        request = _Request(account_id, subject_id, roles, subject_attributes,
                           action, resource_type, resource_id,
                           resource_attributes, context, now_ms, tz_offsets)
        candidates = [r for r in self._rules
                      if self._is_candidate(r, request)]
        steps.append("%d of %d rules match action %s on %s:%s for roles %s"
                     % (len(candidates), len(self._rules), action,
                        resource_type or "-", resource_id or "-",
                        ", ".join(roles) or "(none)"))
        for rule in candidates:
            steps.append(self._explain_rule(rule, record, request))
            if rule.deny and rule.index == index:
                break

        rule = self._rules[index] if index >= 0 else None
        return steps + [_verdict(reason, rule.id if rule else None)]

    def _explain_rule(self, rule: _Rule, record: LicenseRecord,
                      request: _Request) -> str:
        head = "rule %s (%s)" % (rule.id, rule.effect)
        if not rule.deny and not self._entitled(rule, record):
            return "%s: the license lacks entitlement %s" % (
                head, rule.entitlement.decode())
        for number, condition in enumerate(rule.conditions, 1):
            if not self._holds(condition, record, request):
                return "%s: condition %d failed: %s" % (
                    head, number, self._describe(condition, record,
                                                 request))
        if not rule.conditions:
            return "%s: applies (no conditions)" % head
        return "%s: all %d conditions hold" % (head, len(rule.conditions))

    def _describe(self, condition: _Condition, record: LicenseRecord,
                  request: _Request) -> str:
        if condition.op == "time":
            weekday, minute = _local_day_minute(
                request.now_ms, request.tz_offsets[condition.tz])
            return ("local time %s %02d:%02d in %s is outside %02d:%02d-"
                    "%02d:%02d on the allowed days"
                    % (_WEEKDAYS[weekday], minute // 60, minute % 60,
                       self.timezones[condition.tz], condition.start // 60,
                       condition.start % 60, condition.end // 60,
                       condition.end % 60))
        value = self._attribute(condition, record, request)
        attr = "%s.%s" % (condition.source, condition.key)
        if value is None:
            return "%s is absent" % attr
        literal = condition.value
        if condition.op == "cidr":
            literal = "the listed networks"
        elif isinstance(literal, list):
            literal = [v.decode("utf-8", "replace") for v in literal]
        elif isinstance(literal, bytes):
            literal = literal.decode("utf-8", "replace")
        return "%s = %r, wanted %s %s" % (
            attr, value.decode("utf-8", "replace"), condition.op, literal)

    def _is_candidate(self, rule: _Rule, request: _Request) -> bool:
        if not any(_action_matches(p, request.action) for p in rule.actions):
            return False
        if not any(t == "*" or t == request.resource_type
                   for t in rule.resource_types):
            return False
        if not any(_resource_id_matches(p, request.resource_id)
                   for p in rule.resource_ids):
            return False
        return not rule.roles or any(
            isinstance(r, str) and r in rule.roles
            for r in request.roles or ())

    def _entitled(self, rule: _Rule, record: LicenseRecord) -> bool:
        if rule.entitlement is None:
            return True
        if rule.entitlement in record.entitlements:
            return True
        plan = self._plans.get(record.plan)
        return plan is not None and rule.entitlement in plan[0]

    def _limit_max(self, rule: _Rule, record: LicenseRecord) -> int:
        if rule.limit_name is None:
            return -1
        own = record.limit(rule.limit_name)
        if own is not None:
            return own
        plan = self._plans.get(record.plan)
        if plan is not None and rule.limit_name in plan[1]:
            return plan[1][rule.limit_name]
        return 0

    def _conditions_hold(self, rule: _Rule, record: LicenseRecord,
                         request: _Request) -> bool:
        return all(self._holds(c, record, request) for c in rule.conditions)

    def _attribute(self, condition: _Condition, record: LicenseRecord,
                   request: _Request) -> bytes | None:
        source, key = condition.source, condition.key
        if source == "account":
            value = request.account_id if key == "id" else None
        elif source == "subject":
            value = (request.subject_id if key == "id"
                     else _get(request.subject_attributes, key))
        elif source == "resource":
            if key == "id":
                value = request.resource_id
            elif key == "type":
                value = request.resource_type
            else:
                value = _get(request.resource_attributes, key)
        elif source == "context":
            value = _get(request.context, key)
        elif source == "license":
            if key == "plan":
                return record.plan
            return record.attribute(_utf8(key))
        else:
            value = None
        return _utf8(value) if isinstance(value, str) else None

    def _holds(self, condition: _Condition, record: LicenseRecord,
               request: _Request) -> bool:
        op = condition.op
        if op == "time":
            weekday, minute = _local_day_minute(
                request.now_ms, request.tz_offsets[condition.tz])
            if not condition.days >> weekday & 1:
                return False
            if condition.start <= condition.end:
                return condition.start <= minute < condition.end
            return minute >= condition.start or minute < condition.end

        value = self._attribute(condition, record, request)
        if value is None:
            return False

        if op == "eq":
            return value == condition.value
        if op == "ne":
            return value != condition.value
        if op == "in":
            return value in condition.value
        if op == "not_in":
            return value not in condition.value
        if op == "cidr":
            address = _address(value)
            return address is not None and any(
                _in_network(address, n) for n in condition.value)

        number = _number(value)
        if number is None:
            return False
        if op == "gt":
            return number > condition.value
        if op == "gte":
            return number >= condition.value
        if op == "lt":
            return number < condition.value
        return number <= condition.value



_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _moment(ms: int) -> str:
    if ms <= -(2**63) or ms >= 2**63 - 1:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(
        ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verdict(reason: int, rule_id: str | None) -> str:
    text = "rules: %s" % Reason(reason).name.lower()
    return text + (" (rule %s)" % rule_id if rule_id else "")


def _status_name(status: int) -> str:
    try:
        return LicenseStatus(status).name.lower()
    except ValueError:
        return "unknown status %d (not active)" % status
