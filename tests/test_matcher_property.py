"""The compiled matcher and the reference give the same answers.

Hypothesis draws compiled policies, license records and requests from a
small vocabulary (so that rules do match) sprinkled with awkward values:
numeric-looking strings, odd addresses, empty strings, non-ASCII text.
Both matchers must return the same ``(reason, rule_index, limit_max)``, or
both raise ``CorruptRecord``.
"""

import collections

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitauth._core import Matcher
from jitauth.licenses import CorruptRecord, License, encode_license
from jitauth.model import LicenseStatus, Reason
from jitauth.reference import ReferenceMatcher

ACTIONS = ["a", "a.b", "a.c", "a.b.c", "d.e", "a.", ""]
ACTION_PATTERNS = ["*", "a.*", "a.b.*", "d.*", "a", "a.b", "a.b.c", "d.e",
                   "x.y"]
TYPES = ["doc", "img", ""]
TYPE_PATTERNS = ["*", "doc", "img"]
IDS = ["r-1", "r-2", "r-", "r", "x", "", "ü-1"]
ID_PATTERNS = ["*", "r-*", "r-1", "x", "ü-*", "r-1*"]
ROLES = ["admin", "dev", "ops", "Dev"]
ENTITLEMENTS = ["e1", "e2", "e3"]
LIMITS = ["l1", "l2"]
PLANS = ["basic", "pro", "gone"]
ZONES = ["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu",
         "Pacific/Chatham"]
KEYS = ["k1", "k2", "id", "type", "plan"]
ATTRS = ["context.k1", "context.k2", "subject.k1", "subject.id",
         "resource.k1", "resource.id", "resource.type", "license.k1",
         "license.k2", "license.plan", "license.id", "account.id",
         "account.k1"]
VALUES = [
    "", "1", "2.5", "-3", "3", "03", "-0", "1.", ".5", "1e3", "+1", " 1",
    "1 ", "٣", "9" * 32, "9" * 33, "0.1", "1.0000000000000001",
    "10.1.2.3", "010.1.1.1", "1.2.3.4", "1.2.3.256", "::ffff:1.2.3.4",
    "2001:db8::1", "::", "1.2.3.4\x00", "fe80::1%eth0", "ünï", "\U0001f600",
    "basic", "pro", "r-1", "doc", "acme", "ann", "a\udc80",
]
NETWORKS = ["10.0.0.0/8", "1.2.3.0/24", "1.2.3.4/32", "0.0.0.0/0", "::/0",
            "2001:db8::/32", "::ffff:0:0/96", "1.2.3.128/25"]
# 2024-03-31 and 2024-10-27: Europe's daylight-saving changes.
MOMENTS = [1_711_846_740_000, 1_711_846_800_000, 1_729_990_800_000,
           1_700_000_000_000, 0, -1]

values = st.one_of(st.sampled_from(VALUES), st.text(max_size=6))
attribute_maps = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)


def conditions(n_zones):
    literal = st.sampled_from(VALUES)
    number = st.sampled_from([-3.0, 0.0, 1.0, 2.5, 3.0, 1e30, 0.1])
    attr = st.sampled_from(ATTRS)
    compare = st.one_of(
        st.builds(lambda a, o, v: {"attr": a, "op": o, "value": v},
                  attr, st.sampled_from(["eq", "ne"]), literal),
        st.builds(lambda a, o, v: {"attr": a, "op": o, "value": v},
                  attr, st.sampled_from(["in", "not_in"]),
                  st.lists(literal, min_size=1, max_size=3)),
        st.builds(lambda a, o, v: {"attr": a, "op": o, "value": v},
                  attr, st.sampled_from(["gt", "gte", "lt", "lte"]),
                  number),
        st.builds(lambda a, v: {"attr": a, "op": "cidr", "value": v},
                  attr, st.lists(st.sampled_from(NETWORKS), min_size=1,
                                 max_size=3)),
    )
    if not n_zones:
        return compare
    minute = st.integers(0, 1440)
    time = st.builds(
        lambda start, end, days, tz: {"op": "time", "from": start,
                                      "to": end, "days": days, "tz": tz},
        minute, minute, st.integers(0, 127), st.integers(0, n_zones - 1))
    return st.one_of(compare, time)


@st.composite
def policies(draw):
    zones = draw(st.lists(st.sampled_from(ZONES), unique=True, max_size=2))
    plans = {}
    for name in draw(st.lists(st.sampled_from(PLANS[:2]), unique=True)):
        plans[name] = {
            "entitlements": draw(st.lists(st.sampled_from(ENTITLEMENTS),
                                          unique=True)),
            "limits": draw(st.dictionaries(st.sampled_from(LIMITS),
                                           st.integers(0, 9))),
        }
    rules = []
    for i in range(draw(st.integers(1, 12))):
        effect = draw(st.sampled_from(["allow", "allow", "deny"]))
        pick = lambda options: draw(  # noqa: E731
            st.lists(st.sampled_from(options), min_size=1, max_size=2))
        rules.append({
            "id": "rule-%d" % i,
            "effect": effect,
            "actions": pick(ACTION_PATTERNS),
            "resource_types": pick(TYPE_PATTERNS),
            "resource_ids": pick(ID_PATTERNS),
            "roles": draw(st.one_of(st.just([]), st.lists(
                st.sampled_from(ROLES), max_size=2))),
            "entitlement": (draw(st.sampled_from([None, *ENTITLEMENTS]))
                            if effect == "allow" else None),
            "when": draw(st.one_of(st.just([]), st.lists(
                conditions(len(zones)), max_size=2))),
            "ttl_ms": 60_000 if effect == "allow" else 0,
            "limit": (draw(st.sampled_from([None, *LIMITS]))
                      if effect == "allow" else None),
        })
    return {"format": 1, "plans": plans, "timezones": zones, "rules": rules}


window_bounds = st.one_of(st.sampled_from(MOMENTS),
                          st.integers(-(2**40), 2**41))


def bound(draw):
    """Mostly no bound, so that most licenses reach the rule walk."""
    return draw(window_bounds) if draw(st.integers(0, 9)) >= 7 else None


@st.composite
def records(draw):
    kind = draw(st.sampled_from(["license"] * 16 + ["none", "corrupt"]))
    if kind == "none":
        return None
    lic = License(
        account_id="acme",
        plan=draw(st.sampled_from(PLANS + ["", "ünï"])),
        status=draw(st.sampled_from([LicenseStatus.ACTIVE] * 20
                                    + list(LicenseStatus))),
        valid_from_ms=bound(draw),
        valid_until_ms=bound(draw),
        entitlements=tuple(draw(st.lists(st.sampled_from(ENTITLEMENTS),
                                         max_size=2))),
        limits=draw(st.dictionaries(st.sampled_from(LIMITS + ["l3"]),
                                    st.integers(-2**63, 2**63 - 1))),
        attributes=draw(st.dictionaries(st.sampled_from(KEYS), st.one_of(
            st.sampled_from(VALUES[:-1]), st.text(max_size=4).filter(
                lambda t: not any(0xD800 <= ord(c) < 0xE000 for c in t)),
        ), max_size=3)),
    )
    raw = encode_license(lic)
    if kind == "corrupt":
        cut = draw(st.integers(0, len(raw)))
        raw = bytearray(raw[:cut])
        if cut == len(raw) and raw:
            raw[0] = draw(st.sampled_from([0, 2]))
        raw = bytes(raw)
    return raw


requests = st.fixed_dictionaries({
    "account_id": st.sampled_from(["acme", "", "ünï", "r-1"]),
    "subject_id": st.sampled_from(["ann", "", "1", "10.1.2.3"]),
    "roles": st.lists(st.sampled_from(ROLES + ["", "x"]), max_size=3),
    "subject_attributes": attribute_maps,
    "action": st.one_of(*[st.sampled_from(ACTIONS)] * 4,
                        st.text(max_size=5)),
    "resource_type": st.sampled_from(TYPES),
    "resource_id": st.one_of(*[st.sampled_from(IDS)] * 3,
                             st.text(max_size=4)),
    "resource_attributes": attribute_maps,
    "context": attribute_maps,
    "now_ms": st.one_of(st.sampled_from(MOMENTS),
                        st.integers(0, 4_102_444_800_000)),
})


def decide(matcher, raw, request, tz_offsets):
    try:
        return matcher.match(raw, tz_offsets=tz_offsets, **request)
    except CorruptRecord:
        return "corrupt"


def test_matchers_agree():
    seen = collections.Counter()

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(policies(), records(), requests,
           st.one_of(st.none(), st.lists(st.integers(-1440, 1440),
                                         min_size=2, max_size=2)))
    def check(policy, raw, request, tz_offsets):
        compiled = Matcher(policy, 3)
        reference = ReferenceMatcher(policy, 3)

        expected = decide(reference, raw, request, tz_offsets)
        assert decide(compiled, raw, request, tz_offsets) == expected
        # Twice: the compiled matcher caches candidates per action.
        assert decide(compiled, raw, request, tz_offsets) == expected
        seen[expected if expected == "corrupt" else expected[0]] += 1

    check()

    # Not vacuous: the run decided all kinds of ways, allows included.
    total = sum(seen.values())
    assert seen[Reason.ALLOWED_BY_RULE] > total // 20, seen
    assert seen[Reason.DENIED_BY_RULE] > total // 50, seen
    assert seen[Reason.NOT_ENTITLED] > total // 100, seen
    assert seen[Reason.NO_MATCHING_RULE] > total // 20, seen
    assert seen["corrupt"] > 0, seen
    assert len(seen) == 9, seen


def test_limit_max_and_conditions_agree_on_allows():
    """Allows with limits and conditions, where the answers carry most."""
    seen = collections.Counter()

    @settings(max_examples=300, deadline=None, database=None)
    @given(policies(), records(), requests)
    def check(policy, raw, request):
        for rule in policy["rules"]:
            rule["actions"] = ["*"]
            rule["resource_ids"] = ["*"]
            rule["resource_types"] = ["*"]
            rule["roles"] = []
        compiled = Matcher(policy, 3)
        reference = ReferenceMatcher(policy, 3)

        expected = decide(reference, raw, request, None)
        assert decide(compiled, raw, request, None) == expected
        if expected != "corrupt" and expected[0] == Reason.ALLOWED_BY_RULE:
            seen[expected[2] >= 0] += 1

    check()

    assert seen[True] > 5 and seen[False] > 5, seen
