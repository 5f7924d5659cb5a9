"""The policy compiler: the language, and an exact error for each mistake."""

import textwrap

import pytest

from jitauth.policy import SourceError, compile_policy

PLANS = """\
plans:
  basic:
    entitlements: [reports.view]
    limits: {exports.concurrent: 2}
"""


def compile_with_plans(text: str) -> dict:
    return compile_policy("policy.yaml", PLANS + textwrap.dedent(text))


def rule_error(rule: str) -> SourceError:
    """Compile PLANS plus one rule; return the error it must raise."""
    text = PLANS + "rules:\n" + textwrap.indent(textwrap.dedent(rule), "  ")
    with pytest.raises(SourceError) as info:
        compile_policy("policy.yaml", text)
    return info.value


def test_compiles_every_feature():
    policy = compile_with_plans("""\
        entitlements: [sso]
        rules:
          - id: export
            effect: allow
            actions: [reports.export, "admin.*"]
            resource: {type: [report, dataset], id: "q3-*"}
            roles: [analyst]
            entitlement: reports.view
            when:
              - {attr: context.env, eq: prod}
              - {attr: context.region, in: [eu, us]}
              - {attr: subject.level, gte: 3}
              - {attr: license.flag, ne: true}
              - {attr: context.ip, cidr: ["10.0.0.0/8", "2001:db8::/32"]}
              - {time: {from: "22:00", to: "06:00", days: [sat, sun],
                        tz: Europe/Berlin}}
            grant: {ttl: 90s, limit: exports.concurrent}
          - id: deny-guests
            effect: deny
            action: "*"
            roles: guest
        """)

    export, deny = policy["rules"]
    assert export["actions"] == ["reports.export", "admin.*"]
    assert export["resource_types"] == ["report", "dataset"]
    assert export["resource_ids"] == ["q3-*"]
    assert export["when"][2] == {"attr": "subject.level", "op": "gte",
                                 "value": 3.0}
    assert export["when"][3]["value"] == "true"
    assert export["when"][5] == {"op": "time", "from": 1320, "to": 360,
                                 "days": 0b1100000, "tz": 0}
    assert export["ttl_ms"] == 90_000
    assert export["limit"] == "exports.concurrent"
    assert policy["timezones"] == ["Europe/Berlin"]
    assert deny == {"id": "deny-guests", "effect": "deny", "actions": ["*"],
                    "resource_types": ["*"], "resource_ids": ["*"],
                    "roles": ["guest"], "entitlement": None, "when": [],
                    "ttl_ms": 0, "max_lifetime_ms": 0, "limit": None,
                    "scope": "account", "quota": None, "units": 1}


def test_allow_rules_default_to_a_minute():
    policy = compile_with_plans("""\
        rules:
          - {id: r, effect: allow, action: reports.view}
        """)
    assert policy["rules"][0]["ttl_ms"] == 60_000


@pytest.mark.parametrize("rule, line, field, words", [
    ("- {effect: allow, action: a}", 6, "rules[0]", "needs an id"),
    ("- {id: r, effect: permit, action: a}", 6, "rules[0].effect",
     "allow or deny"),
    ("- {id: r, effect: allow}", 6, "rules[0]", "exactly one of action"),
    ("- {id: r, effect: allow, action: a.*.b}", 6, "rules[0].action",
     "not an action pattern"),
    ("- {id: r, effect: allow, action: a, resource: {id: 'x*y'}}", 6,
     "rules[0].resource.id", "may only end"),
    ("- {id: r, effect: allow, action: a, entitlement: nope}", 6,
     "rules[0].entitlement", "not granted by any plan"),
    ("- {id: r, effect: deny, action: a, entitlement: reports.view}", 6,
     "rules[0].entitlement", "deny rules cannot"),
    ("- {id: r, effect: deny, action: a, grant: {ttl: 5s}}", 6,
     "rules[0].grant", "no grant"),
    ("- {id: r, effect: allow, action: a, grant: {ttl: 2d}}", 6,
     "rules[0].grant.ttl", "duration"),
    ("- {id: r, effect: allow, action: a, grant: {ttl: 25h}}", 6,
     "rules[0].grant.ttl", "between 1s and 24h"),
    ("- {id: r, effect: allow, action: a, grant: {limit: seats}}", 6,
     "rules[0].grant.limit", "not defined by any plan"),
    ("- {id: r, effect: allow, action: a, colour: red}", 6,
     "rules[0].colour", "unknown field"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {attr: context.ip, cidr: 10.0.0.1/8}
     """, 10, "rules[0].when[0].cidr", "host bits set"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {attr: body.size, gt: 3}
     """, 10, "rules[0].when[0].attr", "not an attribute"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {attr: subject.level, gt: "3"}
     """, 10, "rules[0].when[0].gt", "must be a number"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {attr: subject.level, gt: 3, lt: 5}
     """, 10, "rules[0].when[0]", "exactly one comparison"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {time: {from: "09:00", to: "09:00", tz: UTC}}
     """, 10, "rules[0].when[0].time.to", "must differ"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {time: {from: "9am", to: "17:00", tz: UTC}}
     """, 10, "rules[0].when[0].time.from", "HH:MM"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {time: {from: "09:00", to: "17:00", tz: Mars/Olympus}}
     """, 10, "rules[0].when[0].time.tz", "not a known time zone"),
    ("""\
     - id: r
       effect: allow
       action: a
       when:
         - {time: {from: "09:00", to: "17:00", tz: UTC, days: [funday]}}
     """, 10, "rules[0].when[0].time.days", "not a day"),
    ("""\
     - {id: r, effect: allow, action: a}
     - {id: r, effect: deny, action: b}
     """, 7, "rules[1].id", "already used at line 6"),
])
def test_rule_errors_name_line_and_field(rule, line, field, words):
    error = rule_error(rule)

    assert (error.path, error.line, error.field) == ("policy.yaml", line,
                                                     field)
    assert words in error.message
    assert str(error).startswith("policy.yaml:%d: %s: " % (line, field))


@pytest.mark.parametrize("text, line, field, words", [
    ("", 1, "file", "empty"),
    ("plans: [a, b\n", 2, "yaml", ""),
    ("plans: {a: {}}\nplans: {b: {}}\nrules: []\n", 2, "yaml",
     "duplicate key 'plans'"),
    ("plans: {a: {}}\nrules: []\n", 2, "rules", "non-empty list"),
    ("plans: {}\nrules: [{id: r, effect: allow, action: a}]\n", 1, "plans",
     "must map plan names"),
    ("plans: {a: {limits: {x: -1}}}\nrules: []\n", 1, "plans.a.limits.x",
     "whole number"),
    ("plans: {a: {}}\nrule: []\n", 2, "rule", "unknown field"),
])
def test_document_errors(text, line, field, words):
    with pytest.raises(SourceError) as info:
        compile_policy("p.yaml", text)

    assert (info.value.line, info.value.field) == (line, field)
    assert words in info.value.message


def test_unreadable_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError) as info:
        compile_policy(str(tmp_path / "missing.yaml"))

    assert info.value.field == "file"


def compile_condition(condition: str) -> dict:
    """Compile PLANS plus one allow rule with one condition (line 10)."""
    return compile_with_plans("""\
        rules:
          - id: r
            effect: allow
            action: reports.view
            when:
              - {attr: context.x, %s}
        """ % condition)["rules"][0]["when"][0]


def condition_error(condition: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        compile_condition(condition)
    return info.value


@pytest.mark.parametrize("network, words", [
    ('"fe80::%eth0/64"', "scope id"),
    ('"fe80::1%25/128"', "scope id"),
    ('"1.2.3.04/32"', "not an IPv4 or IPv6 address"),
    ('"10.0.0.0/33"', ""),
])
def test_cidr_refuses_what_the_matchers_cannot_parse(network, words):
    error = condition_error("cidr: [%s]" % network)

    assert (error.path, error.line) == ("policy.yaml", 10)
    assert error.field == "rules[0].when[0].cidr[0]"
    assert words in error.message


def test_cidr_networks_compile_to_what_inet_pton_reads():
    condition = compile_condition(
        'cidr: ["10.0.0.0/255.0.0.0", "::ffff:1.2.3.4/128", "2001:db8::/32"]')

    assert condition["value"] == ["10.0.0.0/8", "::ffff:102:304/128",
                                  "2001:db8::/32"]


def test_a_policy_no_matcher_can_build_is_refused(monkeypatch):
    """The safety net: whatever the checks above miss, a policy both
    matchers cannot be built from is an error naming the rule."""
    import jitauth.reference

    class Refusing(jitauth.reference.ReferenceMatcher):
        def __init__(self, policy, revision):
            if any(r["id"] == "broken" for r in policy["rules"]):
                raise ValueError("cannot build")
            super().__init__(policy, revision)

    monkeypatch.setattr(jitauth.reference, "ReferenceMatcher", Refusing)

    with pytest.raises(SourceError) as info:
        compile_with_plans("""\
            rules:
              - {id: fine, effect: allow, action: reports.view}
              - {id: broken, effect: allow, action: reports.view}
            """)

    assert (info.value.line, info.value.field) == (7, "rules[1]")
    assert "no matcher can be built" in info.value.message
    assert "cannot build" in info.value.message


def test_literals_are_typed_as_yaml_1_2_types_them():
    condition = compile_condition(
        "in: [NO, KP, yes, on, off, y, 0x1F, 010, 0o7, 12:30, +5, .inf, "
        "2026-01-01, true, False, TRUE, 0, -12, 42, ~x]")

    assert condition["value"] == [
        "NO", "KP", "yes", "on", "off", "y", "0x1F", "010", "0o7", "12:30",
        "+5", ".inf", "2026-01-01", "true", "false", "true", "0", "-12",
        "42", "~x"]
    assert compile_condition("eq: 010")["value"] == "010"
    assert compile_condition("eq: 12:30")["value"] == "12:30"
    assert compile_condition("ne: 0x1F")["value"] == "0x1F"


def test_plain_numbers_nulls_and_times_of_day_still_read_as_meant():
    policy = compile_with_plans("""\
        rules:
          - id: r
            effect: allow
            action: reports.view
            roles: ~
            entitlement: null
            when:
              - {attr: subject.level, gte: -2.5}
              - {attr: subject.level, lt: 1e3}
              - {attr: subject.level, lte: 7}
              - {time: {from: 12:30, to: 13:45, tz: UTC}}
            grant: {ttl: 30}
        """)

    rule = policy["rules"][0]
    assert [c.get("value") for c in rule["when"][:3]] == [-2.5, 1000.0, 7.0]
    assert (rule["when"][3]["from"], rule["when"][3]["to"]) == (750, 825)
    assert (rule["roles"], rule["entitlement"]) == ([], None)
    assert rule["ttl_ms"] == 30_000


@pytest.mark.parametrize("condition, field, words", [
    ("eq: !!int 0x1F", "yaml", "not a decimal integer"),
    ("eq: !!bool yes", "yaml", "not a boolean"),
    ("eq: !!timestamp x", "yaml", "!!timestamp is not supported"),
    ("eq: !!binary '%%'", "yaml", "!!binary is not supported"),
    ("gte: +5", "rules[0].when[0].gte", "written in decimal"),
    ("gte: .inf", "rules[0].when[0].gte", "written in decimal"),
    ("gte: 1e400", "rules[0].when[0].gte", "finite double"),
    ("gte: " + "9" * 400, "rules[0].when[0].gte", "finite double"),
    ("lt: -" + "9" * 400, "rules[0].when[0].lt", "finite double"),
    ("gte: " + "9" * 5000, "yaml", "more than 4300 digits"),
    ("eq: " + "9" * 5000, "yaml", "more than 4300 digits"),
])
def test_out_of_range_and_ambiguous_literals_are_errors(condition, field,
                                                        words):
    error = condition_error(condition)

    assert (error.line, error.field) == (10, field)
    assert words in error.message


def test_deep_nesting_is_a_source_error():
    with pytest.raises(SourceError) as info:
        compile_policy("p.yaml", "plans: " + "[" * 5000 + "\n")

    assert info.value.field == "yaml"


@pytest.mark.parametrize("text, line, field", [
    ("rules: [{id: r, effect: allow, action: a}]\n", 1, "plans"),
    ("entitlements: [x]\nrules: [{id: r, effect: allow, action: a}]\n", 1,
     "plans"),
    ("plans: {a: {}}\n", 1, "rules"),
])
def test_a_missing_section_is_required(text, line, field):
    with pytest.raises(SourceError) as info:
        compile_policy("p.yaml", text)

    assert (info.value.line, info.value.field) == (line, field)
    assert info.value.message.startswith("is required")


def test_an_oversized_policy_file_is_refused_unread(tmp_path, monkeypatch):
    import jitauth.policy

    monkeypatch.setattr(jitauth.policy, "MAX_SOURCE_BYTES", 64)
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * 100 + "\n")

    with pytest.raises(SourceError) as info:
        compile_policy(str(path))

    assert (info.value.field, info.value.message) == (
        "file", "larger than 64 bytes")
