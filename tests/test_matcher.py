"""The matcher contract of docs/internals.md, step by step and op by op.

Every test runs against both matchers (the ``matcher_class`` fixture): the
compiled ``jitauth._core.Matcher`` and ``jitauth.reference.
ReferenceMatcher``.
"""

import struct
from datetime import datetime, timezone

import pytest

import jitauth._core
from jitauth import clock, licenses
from jitauth._core import Environment, StoreError
from jitauth.licenses import CorruptRecord, License, encode_license
from jitauth.model import LicenseStatus, Reason
from jitauth.v1 import authorizer_pb2

NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC, a Tuesday


def utc_ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def rule(rule_id="r", effect="allow", actions=("*",), types=("*",),
         ids=("*",), roles=(), entitlement=None, when=(), limit=None):
    return {
        "id": rule_id,
        "effect": effect,
        "actions": list(actions),
        "resource_types": list(types),
        "resource_ids": list(ids),
        "roles": list(roles),
        "entitlement": entitlement,
        "when": list(when),
        "ttl_ms": 60_000 if effect == "allow" else 0,
        "limit": limit,
    }


PLANS = {
    "pro": {"entitlements": ["reports.export", "reports.view"],
            "limits": {"exports.concurrent": 5}},
    "free": {"entitlements": ["reports.view"], "limits": {}},
}


def policy(*rules, plans=PLANS, timezones=()):
    return {"format": 1, "plans": plans, "timezones": list(timezones),
            "rules": list(rules)}


def record(plan="pro", **fields):
    return encode_license(License(account_id="acme", plan=plan, **fields))


ACTIVE = record()


def decide(matcher, license=ACTIVE, *, account_id="acme", subject_id="ann",
           roles=(), subject=None, action="reports.export",
           resource_type="report", resource_id="rep-1", resource=None,
           context=None, now_ms=NOW, tz_offsets=None):
    return matcher.match(license, account_id, subject_id, roles,
                         subject or {}, action, resource_type, resource_id,
                         resource or {}, context or {}, now_ms, tz_offsets)


def when(attr, op, value):
    return {"attr": attr, "op": op, "value": value}


def check(matcher_class, condition, expected=True, **request):
    """Whether one condition holds for a request (allow or no rule)."""
    matcher = matcher_class(policy(rule(when=[condition])), 1)
    reason = decide(matcher, **request)[0]
    assert reason == (Reason.ALLOWED_BY_RULE if expected
                      else Reason.NO_MATCHING_RULE)


def test_corrupt_record_is_one_class():
    assert jitauth._core.CorruptRecord is licenses.CorruptRecord
    assert issubclass(CorruptRecord, ValueError)


# --- steps 1 to 4: the license -----------------------------------------------

def test_no_license(matcher_class):
    matcher = matcher_class(policy(rule()), 1)

    assert decide(matcher, None) == (Reason.NO_LICENSE, -1, -1)


@pytest.mark.parametrize("status", [LicenseStatus.SUSPENDED,
                                    LicenseStatus.REVOKED, 0, 9])
def test_inactive_license(matcher_class, status):
    matcher = matcher_class(policy(rule()), 1)
    raw = bytearray(ACTIVE)
    raw[1] = status

    assert decide(matcher, bytes(raw)) == (Reason.LICENSE_INACTIVE, -1, -1)


def test_validity_window_bounds(matcher_class):
    matcher = matcher_class(policy(rule()), 1)
    lic = record(valid_from_ms=NOW, valid_until_ms=NOW + 10)

    assert decide(matcher, lic, now_ms=NOW - 1)[0] == (
        Reason.LICENSE_NOT_YET_VALID)
    assert decide(matcher, lic, now_ms=NOW)[0] == Reason.ALLOWED_BY_RULE
    assert decide(matcher, lic, now_ms=NOW + 9)[0] == Reason.ALLOWED_BY_RULE
    assert decide(matcher, lic, now_ms=NOW + 10) == (
        Reason.LICENSE_EXPIRED, -1, -1)


def test_status_is_checked_before_window(matcher_class):
    matcher = matcher_class(policy(rule()), 1)
    lic = record(status=LicenseStatus.SUSPENDED, valid_until_ms=NOW - 1)

    assert decide(matcher, lic)[0] == Reason.LICENSE_INACTIVE


def test_license_checks_come_before_rules(matcher_class):
    matcher = matcher_class(policy(rule(effect="deny")), 1)
    lic = record(valid_until_ms=NOW)

    assert decide(matcher, lic)[0] == Reason.LICENSE_EXPIRED


def test_unbounded_window(matcher_class):
    matcher = matcher_class(policy(rule()), 1)

    for now in (-(2**63), 0, 2**63 - 2):
        assert decide(matcher, now_ms=now)[0] == Reason.ALLOWED_BY_RULE


# --- corrupt records ---------------------------------------------------------

FULL = record(entitlements=("a",), limits={"l": 1},
              attributes={"k": "v", "tier": "gold"})


@pytest.mark.parametrize("size", range(len(FULL)))
def test_truncated_record_is_corrupt(matcher_class, size):
    matcher = matcher_class(policy(rule()), 1)

    with pytest.raises(CorruptRecord):
        decide(matcher, FULL[:size])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_format_is_corrupt(matcher_class, version):
    matcher = matcher_class(policy(rule()), 1)

    with pytest.raises(CorruptRecord):
        decide(matcher, bytes([version]) + FULL[1:])


def test_counts_beyond_the_record_are_corrupt(matcher_class):
    matcher = matcher_class(policy(rule()), 1)
    raw = bytearray(FULL)
    struct.pack_into("<H", raw, 6, 3)  # three attributes; there are two

    with pytest.raises(CorruptRecord):
        decide(matcher, bytes(raw))


def test_corruption_is_found_for_inactive_licenses(matcher_class):
    matcher = matcher_class(policy(rule()), 1)
    raw = record(status=LicenseStatus.REVOKED, attributes={"k": "v"})

    with pytest.raises(CorruptRecord):
        decide(matcher, raw[:-1])


def test_trailing_bytes_are_ignored(matcher_class):
    matcher = matcher_class(policy(rule()), 1)

    assert decide(matcher, FULL + b"\0\1")[0] == Reason.ALLOWED_BY_RULE


def test_record_may_be_any_bytes_like(matcher_class):
    matcher = matcher_class(policy(rule()), 1)

    assert decide(matcher, memoryview(FULL))[0] == Reason.ALLOWED_BY_RULE
    assert decide(matcher, bytearray(FULL))[0] == Reason.ALLOWED_BY_RULE


# --- step 5 and 6: the rule walk ---------------------------------------------

def test_no_rule_matches(matcher_class):
    matcher = matcher_class(policy(rule(actions=["other"])), 1)

    assert decide(matcher) == (Reason.NO_MATCHING_RULE, -1, -1)


def test_first_allow_in_file_order_decides(matcher_class):
    matcher = matcher_class(policy(rule("a"), rule("b")), 1)

    assert decide(matcher) == (Reason.ALLOWED_BY_RULE, 0, -1)


@pytest.mark.parametrize("deny_first", [True, False])
def test_deny_overrides_allow_wherever_it_stands(matcher_class, deny_first):
    rules = [rule("allow"), rule("deny", effect="deny")]
    if deny_first:
        rules.reverse()
    matcher = matcher_class(policy(*rules), 1)

    assert decide(matcher) == (Reason.DENIED_BY_RULE,
                               0 if deny_first else 1, -1)


def test_deny_after_many_allows(matcher_class):
    rules = [rule("a%d" % i) for i in range(50)]
    rules.append(rule("no", effect="deny", actions=["reports.*"]))
    matcher = matcher_class(policy(*rules), 1)

    assert decide(matcher) == (Reason.DENIED_BY_RULE, 50, -1)
    assert decide(matcher, action="other")[:2] == (
        Reason.ALLOWED_BY_RULE, 0)


def test_first_matching_deny_decides(matcher_class):
    matcher = matcher_class(policy(
        rule("d1", effect="deny", when=[when("context.x", "eq", "1")]),
        rule("d2", effect="deny"),
        rule("d3", effect="deny")), 1)

    assert decide(matcher) == (Reason.DENIED_BY_RULE, 1, -1)
    assert decide(matcher, context={"x": "1"}) == (
        Reason.DENIED_BY_RULE, 0, -1)


def test_deny_whose_conditions_fail_is_passed_over(matcher_class):
    matcher = matcher_class(policy(
        rule("no", effect="deny", when=[when("context.env", "eq", "dev")]),
        rule("yes")), 1)

    assert decide(matcher, context={"env": "prod"}) == (
        Reason.ALLOWED_BY_RULE, 1, -1)
    assert decide(matcher, context={"env": "dev"}) == (
        Reason.DENIED_BY_RULE, 0, -1)


def test_allow_whose_conditions_fail_is_passed_over(matcher_class):
    matcher = matcher_class(policy(
        rule("a", when=[when("context.env", "eq", "dev")]),
        rule("b", limit="exports.concurrent")), 1)

    assert decide(matcher) == (Reason.ALLOWED_BY_RULE, 1, 5)


def test_not_entitled(matcher_class):
    matcher = matcher_class(policy(rule(entitlement="reports.export")), 1)

    assert decide(matcher, record("free")) == (Reason.NOT_ENTITLED, 0, -1)
    assert decide(matcher, record("pro"))[:2] == (Reason.ALLOWED_BY_RULE, 0)


def test_entitlement_is_checked_before_conditions(matcher_class):
    matcher = matcher_class(policy(rule(
        entitlement="reports.export",
        when=[when("context.env", "eq", "prod")])), 1)

    assert decide(matcher, record("free")) == (Reason.NOT_ENTITLED, 0, -1)


def test_first_unentitled_rule_is_reported(matcher_class):
    matcher = matcher_class(policy(
        rule("a", when=[when("context.env", "eq", "prod")]),
        rule("b", entitlement="reports.export"),
        rule("c", entitlement="reports.bulk")), 1)

    assert decide(matcher, record("free")) == (Reason.NOT_ENTITLED, 1, -1)


def test_later_entitled_allow_beats_unentitled(matcher_class):
    matcher = matcher_class(policy(
        rule("a", entitlement="reports.export"),
        rule("b", entitlement="reports.view")), 1)

    assert decide(matcher, record("free")) == (Reason.ALLOWED_BY_RULE, 1, -1)


def test_deny_overrides_not_entitled(matcher_class):
    matcher = matcher_class(policy(
        rule("a", entitlement="reports.export"),
        rule("b", effect="deny")), 1)

    assert decide(matcher, record("free")) == (Reason.DENIED_BY_RULE, 1, -1)


def test_entitlement_from_the_license_itself(matcher_class):
    matcher = matcher_class(policy(rule(entitlement="reports.export")), 1)
    lic = record("free", entitlements=("reports.export",))

    assert decide(matcher, lic)[0] == Reason.ALLOWED_BY_RULE


def test_plan_outside_the_policy_has_only_its_own(matcher_class):
    matcher = matcher_class(policy(rule(entitlement="reports.view",
                                        limit="exports.concurrent")), 1)

    assert decide(matcher, record("gone"))[0] == Reason.NOT_ENTITLED
    lic = record("gone", entitlements=("reports.view",),
                 limits={"exports.concurrent": 2})
    assert decide(matcher, lic) == (Reason.ALLOWED_BY_RULE, 0, 2)


def test_limit_max(matcher_class):
    matcher = matcher_class(policy(
        rule("own", actions=["a"], limit="exports.concurrent"),
        rule("undefined", actions=["b"], limit="exports.bulk"),
        rule("none", actions=["c"])), 1)

    assert decide(matcher, action="a") == (Reason.ALLOWED_BY_RULE, 0, 5)
    lic = record(limits={"exports.concurrent": 9})
    assert decide(matcher, lic, action="a") == (Reason.ALLOWED_BY_RULE, 0, 9)
    lic = record(limits={"exports.concurrent": 0})
    assert decide(matcher, lic, action="a") == (Reason.ALLOWED_BY_RULE, 0, 0)
    assert decide(matcher, action="b") == (Reason.ALLOWED_BY_RULE, 1, 0)
    assert decide(matcher, action="c") == (Reason.ALLOWED_BY_RULE, 2, -1)


def test_limit_max_only_for_allows(matcher_class):
    matcher = matcher_class(policy(
        rule("a", entitlement="reports.export", limit="exports.concurrent"),
    ), 1)

    assert decide(matcher, record("free")) == (Reason.NOT_ENTITLED, 0, -1)


# --- targets -----------------------------------------------------------------

@pytest.mark.parametrize("pattern, action, expected", [
    ("*", "anything", True),
    ("*", "", True),
    ("reports.export", "reports.export", True),
    ("reports.export", "reports.export.csv", False),
    ("reports.export", "reports", False),
    ("reports.*", "reports.export", True),
    ("reports.*", "reports.export.csv", True),
    ("reports.*", "reports.", True),
    ("reports.*", "reports", False),
    ("reports.*", "reportsx.export", False),
    ("reports.*", "x.reports.export", False),
    ("a.b.*", "a.b.c", True),
    ("a.b.*", "a.bc", False),
    ("a.b.*", "a.c.d", False),
    ("Reports.*", "reports.export", False),
])
def test_action_patterns(matcher_class, pattern, action, expected):
    matcher = matcher_class(policy(rule(actions=[pattern])), 1)

    assert (decide(matcher, action=action)[0] == Reason.ALLOWED_BY_RULE
            ) is expected


def test_one_rule_with_several_action_patterns(matcher_class):
    matcher = matcher_class(policy(
        rule("a", effect="deny", actions=["x.y", "x.*", "*"]),
        rule("b", actions=["x.*"])), 1)

    assert decide(matcher, action="x.y")[:2] == (Reason.DENIED_BY_RULE, 0)
    assert decide(matcher, action="z")[:2] == (Reason.DENIED_BY_RULE, 0)


def test_many_actions_stay_correct_past_the_cache(matcher_class):
    matcher = matcher_class(policy(
        rule("a", actions=["a.*"]), rule("b", actions=["b.1"])), 1)

    for i in range(10_000):
        assert decide(matcher, action="a.%d" % i)[1] == 0
    assert decide(matcher, action="b.1")[1] == 1


@pytest.mark.parametrize("types, resource_type, expected", [
    (["*"], "report", True),
    (["*"], "", True),
    (["report"], "report", True),
    (["report"], "reports", False),
    (["doc", "report"], "report", True),
    (["doc", "*"], "image", True),
])
def test_resource_types(matcher_class, types, resource_type, expected):
    matcher = matcher_class(policy(rule(types=types)), 1)

    reason = decide(matcher, resource_type=resource_type)[0]
    assert (reason == Reason.ALLOWED_BY_RULE) is expected


@pytest.mark.parametrize("ids, resource_id, expected", [
    (["*"], "anything", True),
    (["*"], "", True),
    (["rep-1"], "rep-1", True),
    (["rep-1"], "rep-10", False),
    (["rep-*"], "rep-10", True),
    (["rep-*"], "rep-", True),
    (["rep-*"], "rep", False),
    (["rep-*"], "xrep-1", False),
    (["doc-1", "rep-*"], "rep-2", True),
    (["doc-*", "rep-1"], "rep-1", True),
    (["doc-*", "rep-1"], "rep-2", False),
    (["ü-*"], "ü-1", True),
])
def test_resource_ids(matcher_class, ids, resource_id, expected):
    matcher = matcher_class(policy(rule(ids=ids)), 1)

    reason = decide(matcher, resource_id=resource_id)[0]
    assert (reason == Reason.ALLOWED_BY_RULE) is expected


@pytest.mark.parametrize("rule_roles, roles, expected", [
    ([], [], True),
    ([], ["x"], True),
    (["analyst"], ["analyst"], True),
    (["analyst"], ["viewer", "analyst"], True),
    (["analyst", "admin"], ["admin"], True),
    (["analyst"], [], False),
    (["analyst"], ["Analyst"], False),
    (["analyst"], ["unknown"], False),
])
def test_roles(matcher_class, rule_roles, roles, expected):
    matcher = matcher_class(policy(rule(roles=rule_roles)), 1)

    reason = decide(matcher, roles=roles)[0]
    assert (reason == Reason.ALLOWED_BY_RULE) is expected


def test_many_roles(matcher_class):
    rules = [rule("r%d" % i, roles=["role%d" % i]) for i in range(2000)]
    matcher = matcher_class(policy(*rules), 1)

    assert decide(matcher, roles=["role1999"])[1] == 1999
    assert decide(matcher, roles=["role64", "role3"])[1] == 3
    assert decide(matcher, roles=("nobody",))[1] == -1


# --- conditions --------------------------------------------------------------

@pytest.mark.parametrize("op, value, attribute, expected", [
    ("eq", "prod", "prod", True),
    ("eq", "prod", "Prod", False),
    ("eq", "prod", "prod ", False),
    ("eq", "", "", True),
    ("eq", "ünï", "ünï", True),
    ("eq", "é", "e\u0301", False),  # no normalisation
    ("ne", "prod", "dev", True),
    ("ne", "prod", "prod", False),
    ("in", ["eu", "us"], "us", True),
    ("in", ["eu", "us"], "apac", False),
    ("not_in", ["eu", "us"], "apac", True),
    ("not_in", ["eu", "us"], "eu", False),
])
def test_string_ops(matcher_class, op, value, attribute, expected):
    check(matcher_class, when("context.x", op, value), expected,
          context={"x": attribute})


@pytest.mark.parametrize("op", ["eq", "ne", "in", "not_in", "gt", "gte",
                                "lt", "lte", "cidr"])
@pytest.mark.parametrize("attr", ["context.x", "subject.x", "resource.x",
                                  "license.x", "account.x", "other.x"])
def test_absent_attribute_never_holds(matcher_class, op, attr):
    value = {"eq": "a", "ne": "a", "in": ["a"], "not_in": ["a"],
             "cidr": ["0.0.0.0/0", "::/0"]}.get(op, 0.0)

    check(matcher_class, when(attr, op, value), False,
          context={"y": "a"}, subject={"y": "1"}, resource={"y": "1"})


@pytest.mark.parametrize("attr, expected", [
    ("subject.id", "ann"),
    ("resource.id", "rep-1"),
    ("resource.type", "report"),
    ("account.id", "acme"),
    ("license.plan", "pro"),
    ("license.tier", "gold"),
    ("subject.level", "3"),
    ("resource.owner", "ann"),
    ("context.env", "prod"),
])
def test_attribute_sources(matcher_class, attr, expected):
    lic = record(attributes={"tier": "gold", "plan": "shadowed"})
    request = dict(subject={"level": "3", "id": "shadowed"},
                   resource={"owner": "ann", "id": "x", "type": "x"},
                   context={"env": "prod"})

    check(matcher_class, when(attr, "eq", expected), True, license=lic,
          **request)
    check(matcher_class, when(attr, "ne", expected), False, license=lic,
          **request)


def test_license_attribute_first_occurrence_counts(matcher_class):
    raw = bytearray(record(attributes={"k": "1", "j": "2"}))
    at = raw.rindex(b"j")
    raw[at] = ord("k")  # two attributes named k: "1" then "2"
    raw = bytes(raw)

    check(matcher_class, when("license.k", "eq", "1"), True, license=raw)
    check(matcher_class, when("license.k", "eq", "2"), False, license=raw)


def test_non_string_attribute_is_absent(matcher_class):
    check(matcher_class, when("context.x", "ne", "a"), False,
          context={"x": 1})


def test_protobuf_maps_and_repeated_roles(matcher_class):
    request = authorizer_pb2.AuthorizeRequest()
    request.context["env"] = "prod"
    request.subject.attributes["level"] = "4"
    request.subject.roles.extend(["viewer", "analyst"])
    request.resource.attributes["owner"] = "ann"
    matcher = matcher_class(policy(rule(roles=["analyst"], when=[
        when("context.env", "eq", "prod"),
        when("subject.level", "gt", 3),
        when("resource.owner", "eq", "ann")])), 1)

    result = decide(matcher, roles=request.subject.roles,
                    subject=request.subject.attributes,
                    resource=request.resource.attributes,
                    context=request.context)
    assert result[0] == Reason.ALLOWED_BY_RULE


def test_all_conditions_must_hold(matcher_class):
    condition = [when("context.a", "eq", "1"), when("context.b", "eq", "2")]
    check(matcher_class, condition[0], True, context={"a": "1"})
    matcher = matcher_class(policy(rule(when=condition)), 1)

    assert decide(matcher, context={"a": "1"})[0] == Reason.NO_MATCHING_RULE
    assert decide(matcher, context={"a": "1", "b": "2"})[0] == (
        Reason.ALLOWED_BY_RULE)


@pytest.mark.parametrize("attribute, expected", [
    ("3", True), ("3.0", True), ("3.5", True), ("10", True),
    ("003", True), ("2.9999", False), ("-3", False), ("-0", False),
    ("3.", False), (".5", False), ("+3", False), (" 3", False),
    ("3 ", False), ("3e0", False), ("1e9", False), ("0x10", False),
    ("inf", False), ("nan", False), ("", False), ("-", False),
    ("3,5", False), ("٣", False), ("３", False), ("3\n", False),
    ("1" * 32, True), ("1" * 33, False), ("0." + "0" * 29 + "4", False),
])
def test_numbers(matcher_class, attribute, expected):
    check(matcher_class, when("context.n", "gte", 3.0), expected,
          context={"n": attribute})


@pytest.mark.parametrize("op, value, attribute, expected", [
    ("gt", 1.5, "1.5", False), ("gt", 1.5, "1.6", True),
    ("gte", 1.5, "1.5", True), ("gte", 1.5, "1.4", False),
    ("lt", 1.5, "1.5", False), ("lt", 1.5, "-2", True),
    ("lte", 1.5, "1.5", True), ("lte", 1.5, "1.50000000000000001", True),
    ("lt", 0.1, "0.1", False), ("lte", 0.0, "-0", True),
    ("gt", 9007199254740992.0, "9007199254740993", False),
])
def test_comparisons(matcher_class, op, value, attribute, expected):
    check(matcher_class, when("subject.n", op, value), expected,
          subject={"n": attribute})


def test_numbers_in_license_attributes(matcher_class):
    lic = record(attributes={"seats": "12", "bad": "12x"})

    check(matcher_class, when("license.seats", "gt", 11), True, license=lic)
    check(matcher_class, when("license.bad", "gt", 11), False, license=lic)


@pytest.mark.parametrize("networks, address, expected", [
    (["10.0.0.0/8"], "10.1.2.3", True),
    (["10.0.0.0/8"], "11.1.2.3", False),
    (["10.0.0.0/8"], "010.1.1.1", False),  # inet_pton: no leading zeros
    (["10.0.0.0/8"], "10.1.2", False),
    (["10.0.0.0/8"], "10.1.2.3 ", False),
    (["10.0.0.0/8"], "10.1.2.3\0", False),
    (["10.0.0.0/8"], "10.1.2.3/32", False),
    (["10.0.0.0/8"], "", False),
    (["10.0.0.0/8"], "::ffff:10.1.2.3", False),  # another family
    (["::ffff:0:0/96"], "::ffff:10.1.2.3", True),
    (["::ffff:0:0/96"], "10.1.2.3", False),
    (["1.2.3.4/32"], "1.2.3.4", True),
    (["1.2.3.4/32"], "1.2.3.5", False),
    (["1.2.3.0/25"], "1.2.3.127", True),
    (["1.2.3.0/25"], "1.2.3.128", False),
    (["0.0.0.0/0"], "255.255.255.255", True),
    (["2001:db8::/32"], "2001:db8::1", True),
    (["2001:db8::/32"], "2001:DB8:0:0:0:0:0:1", True),
    (["2001:db8::/32"], "2001:db9::1", False),
    (["2001:db8::/33"], "2001:db8:8000::", False),
    (["2001:db8::/33"], "2001:db8:7fff::", True),
    (["::/0"], "::", True),
    (["::/0"], "1.2.3.4", False),
    (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", True),
    (["10.0.0.0/8"], "١٠.1.2.3", False),
    (["10.0.0.0/8"], "10.1.2.3" + " " * 100, False),
])
def test_cidr(matcher_class, networks, address, expected):
    check(matcher_class, when("context.ip", "cidr", networks), expected,
          context={"ip": address})


def test_cidr_on_license_attribute(matcher_class):
    lic = record(attributes={"ip": "192.168.1.9"})

    check(matcher_class, when("license.ip", "cidr", ["192.168.0.0/16"]),
          True, license=lic)


# --- time windows ------------------------------------------------------------

def window(start, end, days=0b1111111, tz=0):
    return {"op": "time", "from": start, "to": end, "days": days, "tz": tz}


@pytest.mark.parametrize("hour, minute, expected", [
    (21, 59, False), (22, 0, True), (23, 59, True), (0, 0, True),
    (5, 59, True), (6, 0, False), (12, 0, False),
])
def test_window_across_midnight(matcher_class, hour, minute, expected):
    matcher = matcher_class(policy(rule(when=[window(22 * 60, 6 * 60)]),
                                   timezones=["UTC"]), 1)

    now = utc_ms(2024, 1, 3, hour, minute)
    assert (decide(matcher, now_ms=now)[0] == Reason.ALLOWED_BY_RULE
            ) is expected


@pytest.mark.parametrize("hour, minute, expected", [
    (8, 59, False), (9, 0, True), (16, 59, True), (17, 0, False),
])
def test_window_bounds(matcher_class, hour, minute, expected):
    matcher = matcher_class(policy(rule(when=[window(540, 1020)]),
                                   timezones=["UTC"]), 1)

    now = utc_ms(2024, 1, 3, hour, minute, 30)
    assert (decide(matcher, now_ms=now)[0] == Reason.ALLOWED_BY_RULE
            ) is expected


@pytest.mark.parametrize("day, expected", [
    (1, True),    # Monday 2024-01-01
    (2, False), (3, True), (4, False), (5, False), (6, False),
    (7, True),    # Sunday
])
def test_window_weekdays(matcher_class, day, expected):
    days = 0b1000101  # Monday, Wednesday, Sunday
    matcher = matcher_class(policy(rule(when=[window(0, 1440, days)]),
                                   timezones=["UTC"]), 1)

    now = utc_ms(2024, 1, day, 12)
    assert (decide(matcher, now_ms=now)[0] == Reason.ALLOWED_BY_RULE
            ) is expected


def test_window_weekday_is_the_local_one(matcher_class):
    # Sunday 20:00 UTC is Monday 01:45 in Kathmandu (UTC+05:45).
    matcher = matcher_class(policy(
        rule(when=[window(60, 120, days=0b0000001)]),
        timezones=["Asia/Kathmandu"]), 1)

    assert decide(matcher, now_ms=utc_ms(2024, 1, 7, 20, 0))[0] == (
        Reason.ALLOWED_BY_RULE)
    assert decide(matcher, now_ms=utc_ms(2024, 1, 7, 19, 14))[0] == (
        Reason.NO_MATCHING_RULE)


def test_window_follows_daylight_saving(matcher_class):
    # Berlin moves from UTC+1 to UTC+2 on 2024-03-31 at 01:00 UTC.
    weekdays = 0b0011111
    matcher = matcher_class(policy(
        rule(when=[window(540, 1020, weekdays, tz=1)]),
        timezones=["UTC", "Europe/Berlin"]), 1)

    def allowed(*utc):
        return decide(matcher, now_ms=utc_ms(*utc))[0] == (
            Reason.ALLOWED_BY_RULE)

    assert not allowed(2024, 3, 25, 7, 30)   # Monday 08:30 CET
    assert allowed(2024, 3, 25, 8, 0)        # Monday 09:00 CET
    assert allowed(2024, 4, 1, 7, 30)        # Monday 09:30 CEST
    assert not allowed(2024, 4, 1, 15, 0)    # Monday 17:00 CEST
    assert not allowed(2024, 3, 30, 10, 0)   # Saturday
    assert allowed(2024, 3, 29, 8, 30)       # Friday 09:30 CET


def test_window_with_given_offsets(matcher_class):
    matcher = matcher_class(policy(rule(when=[window(540, 1020)]),
                                   timezones=["Europe/Berlin"]), 1)
    now = utc_ms(2024, 1, 3, 8, 30)

    assert decide(matcher, now_ms=now, tz_offsets=[60])[0] == (
        Reason.ALLOWED_BY_RULE)
    assert decide(matcher, now_ms=now, tz_offsets=[0])[0] == (
        Reason.NO_MATCHING_RULE)
    assert decide(matcher, now_ms=now, tz_offsets=[-600])[0] == (
        Reason.NO_MATCHING_RULE)
    with pytest.raises(ValueError):
        decide(matcher, now_ms=now, tz_offsets=[])


@pytest.mark.parametrize("days, expected", [
    (0b0000100, True),   # Wednesday: 1969-12-31
    (0b0001000, False),  # Thursday: 1970-01-01
])
def test_window_before_the_epoch(matcher_class, days, expected):
    matcher = matcher_class(policy(
        rule(when=[window(23 * 60, 24 * 60, days=days)]),
        timezones=["UTC"]), 1)

    reason = decide(matcher, now_ms=-30 * 60_000)[0]
    assert (reason == Reason.ALLOWED_BY_RULE) is expected


def test_unknown_zone_index_is_refused(matcher_class):
    with pytest.raises(ValueError):
        matcher_class(policy(rule(when=[window(0, 60, tz=1)]),
                             timezones=["UTC"]), 1)


# --- the matcher's description of its rules ----------------------------------

def test_rule_info(matcher_class):
    matcher = matcher_class(policy(
        rule("a", limit="exports.concurrent"),
        rule("b", effect="deny")), 42)

    assert matcher.revision == 42
    assert matcher.rule_ids == ["a", "b"]
    assert matcher.rule_info(0) == ("a", "allow", 60_000,
                                    "exports.concurrent")
    assert matcher.rule_info(1) == ("b", "deny", 0, None)


def test_unknown_format_is_refused(matcher_class):
    with pytest.raises(ValueError):
        matcher_class(dict(policy(rule()), format=2), 1)


# --- match_stored against a real environment ---------------------------------

@pytest.fixture
def env(tmp_path):
    environment = Environment(str(tmp_path), ["meta", "licenses"])
    yield environment
    environment.close()


def store(env, revision=7, **records):
    with env.begin(write=True) as txn:
        if revision is not None:
            txn.put(env.dbs["meta"], b"revision", revision.to_bytes(8, "big"))
        for account, raw in records.items():
            txn.put(env.dbs["licenses"], account.encode(), raw)


def stored(matcher, env, account_id="acme", action="reports.export",
           now_ms=NOW):
    return matcher.match_stored(env, env.dbs["meta"], env.dbs["licenses"],
                                account_id, "ann", ["analyst"], {}, action,
                                "report", "rep-1", {}, {"env": "prod"},
                                now_ms)


def test_match_stored(matcher_class, env):
    big = record(attributes={"k%d" % i: "v" * 20 for i in range(100)})
    store(env, acme=record(limits={"exports.concurrent": 3}),
          gone=record(valid_until_ms=NOW), big=big)
    matcher = matcher_class(policy(
        rule(roles=["analyst"], limit="exports.concurrent",
             when=[when("context.env", "eq", "prod")])), 7)

    for _ in range(3):  # the shared reader is renewed each time
        assert stored(matcher, env) == (Reason.ALLOWED_BY_RULE, 0, 3)
    assert stored(matcher, env, "gone") == (Reason.LICENSE_EXPIRED, -1, -1)
    assert stored(matcher, env, "big") == (Reason.ALLOWED_BY_RULE, 0, 5)
    assert stored(matcher, env, "nobody") == (Reason.NO_LICENSE, -1, -1)
    assert stored(matcher, env, "") == (Reason.NO_LICENSE, -1, -1)
    assert stored(matcher, env, "x" * 600) == (Reason.NO_LICENSE, -1, -1)
    assert stored(matcher, env, "\udc80") == (Reason.NO_LICENSE, -1, -1)


def test_match_stored_with_time_windows(matcher_class, env):
    store(env, acme=record())
    matcher = matcher_class(policy(rule(when=[window(540, 1020)]),
                                   timezones=["Europe/Berlin"]), 7)

    assert stored(matcher, env, now_ms=utc_ms(2024, 1, 3, 8, 30))[0] == (
        Reason.ALLOWED_BY_RULE)
    assert stored(matcher, env, now_ms=utc_ms(2024, 1, 3, 7, 30))[0] == (
        Reason.NO_MATCHING_RULE)


def test_match_stored_stale_revision(matcher_class, env):
    store(env, revision=8, acme=record())
    matcher = matcher_class(policy(rule()), 7)

    assert stored(matcher, env) == (0, -1, -1)
    assert stored(matcher_class(policy(rule()), 8), env)[0] == (
        Reason.ALLOWED_BY_RULE)


def test_match_stored_corrupt_record(matcher_class, env):
    store(env, acme=ACTIVE[:-1])
    matcher = matcher_class(policy(rule()), 7)

    with pytest.raises(CorruptRecord):
        stored(matcher, env)
    store(env, acme=ACTIVE)
    assert stored(matcher, env)[0] == Reason.ALLOWED_BY_RULE


def test_match_stored_without_revision(matcher_class, env):
    store(env, revision=None, acme=ACTIVE)
    matcher = matcher_class(policy(rule()), 7)

    with pytest.raises(StoreError):
        stored(matcher, env)


# --- jitauth.clock -----------------------------------------------------------

def test_tz_offsets():
    before = utc_ms(2024, 3, 31, 0, 59, 59)
    after = utc_ms(2024, 3, 31, 1, 0)
    zones = ["Europe/Berlin", "UTC", "Asia/Kathmandu", "America/St_Johns"]

    assert clock.tz_offsets(zones, before) == [60, 0, 345, -150]
    assert clock.tz_offsets(zones, after) == [120, 0, 345, -150]
    assert clock.tz_offsets(zones, before) == [60, 0, 345, -150]
    assert clock.tz_offsets([], after) == []


def test_tz_offsets_cache_is_bounded():
    zones = ["Etc/GMT+%d" % (i % 12) for i in range(24)]

    for minute in range(clock.MAX_CACHED_ZONES // 4):
        clock.tz_offsets(zones, NOW + minute * 60_000)
    assert len(clock._offsets) <= clock.MAX_CACHED_ZONES
    assert clock.tz_offsets(["Etc/GMT+5"], NOW) == [-300]


def test_clock_is_not_asked_without_time_conditions(matcher_class,
                                                     monkeypatch):
    def refuse(timezones, now_ms):
        raise AssertionError("tz_offsets called")

    monkeypatch.setattr(clock, "tz_offsets", refuse)
    matcher = matcher_class(policy(rule(), timezones=["Europe/Berlin"]), 1)

    assert decide(matcher)[0] == Reason.ALLOWED_BY_RULE


def test_deny_rules_ignore_an_entitlement(matcher_class):
    matcher = matcher_class(policy(
        rule("no", effect="deny", entitlement="reports.bulk")), 1)

    assert decide(matcher) == (Reason.DENIED_BY_RULE, 0, -1)
