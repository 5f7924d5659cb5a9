"""Licenses and ``load``: validation, the binary record, one transaction."""

import json

import pytest

from jitauth._core import Environment
from jitauth.licenses import (
    License,
    decode_license,
    encode_license,
    read_licenses,
)
from jitauth.loader import load
from jitauth.model import LicenseStatus
from jitauth.policy import SourceError
from jitauth.store import Store

POLICY = """\
plans:
  basic: {entitlements: [reports.view], limits: {exports.concurrent: 1}}
  pro: {entitlements: [reports.view, reports.export]}
rules:
  - {id: view, effect: allow, action: reports.view,
     entitlement: reports.view}
"""


@pytest.fixture
def sources(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    licenses = tmp_path / "licenses.jsonl"
    licenses.write_text(
        '{"account": "acme", "plan": "pro", "status": "active",'
        ' "valid_from": "2026-01-01T00:00:00Z",'
        ' "valid_until": "2027-01-01T00:00:00+01:00",'
        ' "entitlements": ["sso"], "limits": {"exports.concurrent": 4},'
        ' "attributes": {"seats": 50, "eu": true, "tier": "gold"}}\n'
        '\n'
        '# comments and blank lines are skipped\n'
        '{"account": "globex", "plan": "basic"}\n')
    return str(policy), str(licenses)


def test_record_round_trip():
    lic = License("acme", "pro", LicenseStatus.SUSPENDED, 5, 10,
                  ("sso", "überall"), {"seats": 2**62}, {"k": "v" * 300})

    assert decode_license("acme", encode_license(lic)) == lic


def test_record_layout_is_the_documented_one():
    record = encode_license(License("a", "p", limits={"x": 7}))

    assert record[:2] == bytes([1, 1])
    assert record[24:27] == b"\x01\x00p"
    assert record[27:30] == b"\x01\x00x"
    assert record[30:38] == (7).to_bytes(8, "little")


def test_read_licenses_converts_fields(sources):
    _, path = sources

    (line1, acme), (line4, globex) = read_licenses(path, {"basic", "pro"})

    assert (line1, line4) == (1, 4)
    assert acme.valid_from_ms == 1767225600000
    assert acme.valid_until_ms == 1798758000000
    assert acme.attributes == {"seats": "50", "eu": "true", "tier": "gold"}
    assert acme.limits == {"exports.concurrent": 4}
    assert globex.status == LicenseStatus.ACTIVE
    assert globex.valid_from_ms is None


@pytest.mark.parametrize("line, field, words", [
    ('{"plan": "pro"}', "account", "non-empty string"),
    ('{"account": "a", "plan": "gold"}', "plan", "not defined"),
    ('{"account": "a", "plan": "pro", "status": "paused"}', "status",
     "one of"),
    ('{"account": "a", "plan": "pro", "valid_from": "2026-01-01T10:00:00"}',
     "valid_from", "no time zone"),
    ('{"account": "a", "plan": "pro", "valid_until": "soon"}',
     "valid_until", "not an RFC 3339"),
    ('{"account": "a", "plan": "pro", "valid_from": "2027-01-01T00:00:00Z",'
     ' "valid_until": "2026-01-01T00:00:00Z"}', "valid_until", "later"),
    ('{"account": "a", "plan": "pro", "limits": {"x": 1.5}}', "limits.x",
     "whole number"),
    ('{"account": "a", "plan": "pro", "attributes": {"x": [1]}}',
     "attributes.x", "string, number or boolean"),
    ('{"account": "a", "plan": "pro", "entitlements": "sso"}',
     "entitlements", "list"),
    ('{"account": "a", "plan": "pro", "seats": 3}', "seats",
     "unknown field"),
    ('{"account": "a", "plan": "pro"', "json", ""),
    ('["a"]', "line", "JSON object"),
])
def test_bad_license_lines(tmp_path, line, field, words):
    path = tmp_path / "l.jsonl"
    path.write_text('{"account": "ok", "plan": "pro"}\n' + line + "\n")

    with pytest.raises(SourceError) as info:
        list(read_licenses(str(path), {"pro"}))

    assert (info.value.path, info.value.line) == (str(path), 2)
    assert info.value.field == field
    assert words in info.value.message


def test_duplicate_account_names_both_lines(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"account": "a", "plan": "pro"}\n' * 2)

    with pytest.raises(SourceError, match=r"l.jsonl:2: account: .*line 1"):
        list(read_licenses(str(path), {"pro"}))


def test_invalid_utf8_is_named(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"account": "a", "plan": "pro"}\n{"account": "\xff"}')

    with pytest.raises(SourceError, match="not UTF-8"):
        list(read_licenses(str(path), {"pro"}))


def stored(data_dir) -> tuple:
    store = Store(str(data_dir))
    try:
        with store.env.begin() as txn:
            revision = store.current_revision(txn)
            accounts = [k.decode() for k, _ in txn.items(store.licenses)]
            policy = store.read_policy(txn, revision) if revision else None
    finally:
        store.close()
    return revision, accounts, policy


def test_load_writes_a_new_revision(tmp_path, sources):
    data = tmp_path / "data"

    assert load(str(data), *sources[:1], [sources[1]]) == 1
    assert load(str(data), sources[0]) == 2

    revision, accounts, policy = stored(data)
    assert revision == 2
    assert accounts == ["acme", "globex"]
    assert policy["rules"][0]["id"] == "view"


def test_failed_load_changes_nothing(tmp_path, sources):
    data = tmp_path / "data"
    load(str(data), sources[0], [sources[1]])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"account": "new", "plan": "pro"}\n'
                   '{"account": "x", "plan": "enterprise"}\n')
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(POLICY.replace("reports.view}", "nope}"))

    with pytest.raises(SourceError, match="bad.jsonl:2: plan"):
        load(str(data), sources[0], [str(bad)])
    with pytest.raises(SourceError,
                       match=r"bad.yaml:6: rules\[0\].entitlement"):
        load(str(data), str(bad_policy), [sources[1]])

    assert stored(data)[:2] == (1, ["acme", "globex"])


def test_account_in_two_files_is_rejected(tmp_path, sources):
    second = tmp_path / "more.jsonl"
    second.write_text(json.dumps({"account": "globex", "plan": "pro"}))

    with pytest.raises(SourceError, match="more.jsonl:1: account: .*"
                                          "licenses.jsonl:4"):
        load(str(tmp_path / "d"), sources[0], [sources[1], str(second)])


def test_store_refuses_a_missing_directory(tmp_path):
    from jitauth._core import StoreError

    with pytest.raises(StoreError, match="no jitauth data"):
        Store(str(tmp_path / "absent"))


def test_environment_refuses_use_after_fork(tmp_path):
    import os

    env = Environment(str(tmp_path), ["meta"])
    pid = os.fork()
    if pid == 0:
        try:
            env.begin()
        except Exception as exc:  # noqa: BLE001 - report any failure
            os._exit(0 if "before fork" in str(exc) else 1)
        os._exit(2)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0


def read_one(tmp_path, line: str, plans=("pro",)):
    """The License of a one-line file, or the SourceError it raises."""
    path = tmp_path / "l.jsonl"
    path.write_text('{"account": "ok", "plan": "pro"}\n' + line + "\n")
    return list(read_licenses(str(path), set(plans)))[1][1]


def line_error(tmp_path, line: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        read_one(tmp_path, line)
    assert info.value.line == 2
    return info.value


def test_float_attributes_are_stored_as_plain_decimals(tmp_path):
    lic = read_one(tmp_path, json.dumps({
        "account": "a", "plan": "pro", "attributes": {
            "tiny": 1e-07, "big": 1e16, "whole": 3.0, "minus_zero": -0.0,
            "half": 0.5, "negative": -1.25e-5, "int": 12}}))

    assert lic.attributes == {
        "tiny": "0.0000001", "big": "10000000000000000", "whole": "3",
        "minus_zero": "0", "half": "0.5", "negative": "-0.0000125",
        "int": "12"}


def test_a_deny_on_a_tiny_float_attribute_applies(tmp_path):
    """1e-07 was stored as "1e-07", which no numeric comparison reads, so
    the deny below did not apply and the allow did."""
    from jitauth._core import Matcher
    from jitauth.model import Reason
    from jitauth.policy import compile_policy
    from jitauth.reference import ReferenceMatcher

    policy = compile_policy("p.yaml", POLICY + """\
  - {id: low-credit, effect: deny, action: reports.view,
     when: [{attr: license.credit, lt: 10}]}
""")
    lic = read_one(tmp_path, '{"account": "a", "plan": "pro", '
                             '"attributes": {"credit": 1e-07}}')

    for matcher in (Matcher(policy, 1), ReferenceMatcher(policy, 1)):
        reason = matcher.match(encode_license(lic), "a", "ann", (), {},
                               "reports.view", "report", "r1", {}, {},
                               1_700_000_000_000, None)[0]
        assert reason == Reason.DENIED_BY_RULE, matcher


@pytest.mark.parametrize("value, words", [
    ("1e300", "301 characters as a plain decimal"),
    ("1e-40", "numeric comparisons read at most 32"),
    ("1" * 33, "33 characters"),
    ("1" * 5000, "5000 characters"),
    ("NaN", "not a finite number"),
    ("Infinity", "not a finite number"),
    ("-1e400", "not a finite number"),
])
def test_numbers_no_comparison_can_read_are_refused(tmp_path, value, words):
    error = line_error(tmp_path, '{"account": "a", "plan": "pro", '
                                 '"attributes": {"n": %s}}' % value)

    assert error.field == "attributes.n"
    assert words in error.message


@pytest.mark.parametrize("line, field, words", [
    ('{"account": "a", "plan": "pro", "status": ["active"]}', "status",
     "one of"),
    ('{"account": "a", "plan": "pro", "status": {}}', "status", "one of"),
    ('{"account": "a", "plan": "pro", "limits": {"x": %s}}' % ("9" * 5000),
     "limits.x", "whole number"),
    ('{"account": %s, "plan": "pro"}' % ("9" * 5000), "account",
     "non-empty string"),
    ('{"account": "a", "plan": "pro", "entitlements": [%s]}' % ("1" * 5000),
     "entitlements", "list of names"),
    ('{"account": "\\ud800", "plan": "pro"}', "account", "lone surrogate"),
    ('{"account": "a", "plan": "pro", "attributes": {"k": "\\udfff"}}',
     "attributes.k", "lone surrogate"),
    ('{"account": "a", "plan": "pro", "attributes": {"k": "%s"}}'
     % ("x" * 70_000), "attributes.k", "longer than 65535 bytes"),
    ("[" * 100_000, "json", "nested too deeply"),
])
def test_odd_json_values_are_field_errors(tmp_path, line, field, words):
    error = line_error(tmp_path, line)

    assert error.field == field
    assert words in error.message


@pytest.mark.parametrize("line, field", [
    ('{"account": "a", "plan": "pro", "status": "revoked",'
     ' "status": "active"}', "status"),
    ('{"account": "a", "account": "b", "plan": "pro"}', "account"),
    ('{"account": "a", "plan": "pro", "limits": {"x": 1, "x": 9}}',
     "limits.x"),
    ('{"account": "a", "plan": "pro", "attributes": {"eu": true,'
     ' "eu": false}}', "attributes.eu"),
])
def test_a_field_given_twice_is_refused(tmp_path, line, field):
    error = line_error(tmp_path, line)

    assert error.field == field
    assert "given twice" in error.message


@pytest.mark.parametrize("text, ms", [
    ("1969-12-31T23:59:59.9995Z", -1),
    ("1969-12-31T23:59:59.999999z", -1),
    ("1970-01-01T00:00:00.0009Z", 0),
    ("1970-01-01t00:00:00.5+00:00", 500),
    ("2026-01-01T01:00:00+01:00", 1767225600000),
    ("2025-12-31T19:00:00.123456789-05:00", 1767225600123),
    ("0001-01-01T00:00:00Z", -62135596800000),
    ("9999-12-31T23:59:59.999Z", 253402300799999),
])
def test_timestamps_are_exact_milliseconds_rounded_down(tmp_path, text, ms):
    lic = read_one(tmp_path, json.dumps(
        {"account": "a", "plan": "pro", "valid_from": text}))

    assert lic.valid_from_ms == ms


@pytest.mark.parametrize("text, words", [
    ("20260101T000000Z", "not an RFC 3339 timestamp"),
    ("2027-W01-1T00:00Z", "not an RFC 3339 timestamp"),
    ("2026-001T00:00:00Z", "not an RFC 3339 timestamp"),
    ("2026-01-01 00:00:00Z", "not an RFC 3339 timestamp"),
    ("2026-01-01T00:00Z", "not an RFC 3339 timestamp"),
    ("2026-01-01", "not an RFC 3339 timestamp"),
    ("2026-01-01T00:00:00+0100", "not an RFC 3339 timestamp"),
    ("2026-01-01T00:00:00.Z", "not an RFC 3339 timestamp"),
    ("\uff12026-01-01T00:00:00Z", "not an RFC 3339 timestamp"),
    ("2026-01-01T00:00:00", "no time zone"),
    ("2026-02-30T00:00:00Z", "not a calendar date"),
    ("2026-01-01T24:00:00Z", "not a time of day"),
    ("2026-12-31T23:59:60Z", "leap seconds"),
    ("2026-01-01T00:00:00+24:00", "no valid zone offset"),
])
def test_only_rfc_3339_timestamps_are_read(tmp_path, text, words):
    error = line_error(tmp_path, json.dumps(
        {"account": "a", "plan": "pro", "valid_until": text}))

    assert error.field == "valid_until"
    assert words in error.message


@pytest.mark.parametrize("line, field", [
    ('{"account": "a", "plan": "pro", "status": ["active"]}', "status"),
    ('{"account": "a", "plan": "pro", "status": "revoked",'
     ' "status": "active"}', "status"),
    ('{"account": "a", "plan": "pro", "attributes": {"n": %s}}'
     % ("1" * 5000), "attributes.n"),
    ('{"account": "a", "plan": "pro", "valid_from": "20260101T000000Z"}',
     "valid_from"),
])
def test_load_reports_odd_values_and_writes_nothing(tmp_path, sources, line,
                                                    field):
    data = tmp_path / "data"
    load(str(data), sources[0], [sources[1]])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"account": "new", "plan": "pro"}\n' + line + "\n")

    with pytest.raises(SourceError) as info:
        load(str(data), sources[0], [str(bad)])

    assert (info.value.path, info.value.line, info.value.field) == \
        (str(bad), 2, field)
    assert stored(data)[:2] == (1, ["acme", "globex"])


def test_load_refuses_a_network_with_a_scope_id(tmp_path, sources):
    data = tmp_path / "data"
    load(str(data), sources[0], [sources[1]])
    scoped = tmp_path / "scoped.yaml"
    scoped.write_text(POLICY + """\
  - id: local
    effect: allow
    action: reports.view
    when: [{attr: context.ip, cidr: ["fe80::%eth0/64"]}]
""")

    with pytest.raises(SourceError) as info:
        load(str(data), str(scoped))

    assert (info.value.line, info.value.field) == \
        (10, "rules[1].when[0].cidr[0]")
    assert stored(data)[0] == 1


def test_rollback_refuses_a_revision_no_matcher_can_build(tmp_path,
                                                          sources):
    """A revision stored before the compiler refused scope ids is not
    installed again: every request would fail."""
    import subprocess
    import sys

    from jitauth.policy import compile_policy
    from jitauth.revisions import compiled_bytes, install, rollback

    data = tmp_path / "data"
    load(str(data), sources[0], [sources[1]])
    broken = compile_policy(sources[0])
    broken["rules"][0]["when"] = [{"attr": "context.ip", "op": "cidr",
                                   "value": ["fe80::%eth0/64"]}]
    store = Store(str(data))
    try:
        with store.env.begin(write=True) as txn:
            install(store, txn, compiled_bytes(broken),
                    {"origin": "load", "policy_file": "old.yaml"})
    finally:
        store.close()
    load(str(data), sources[0])

    with pytest.raises(SourceError) as info:
        rollback(str(data), 2)
    done = subprocess.run(
        [sys.executable, "-m", "jitauth", "rollback", "--data", str(data),
         "--to", "2"], capture_output=True, text=True, timeout=60)

    assert (info.value.path, info.value.field) == ("old.yaml", "rules[0]")
    assert "no matcher can be built" in info.value.message
    assert done.returncode == 2, done.stderr
    assert "old.yaml:0: rules[0]: no matcher can be built" in done.stderr
    assert stored(data)[0] == 3


def test_plan_and_limit_reads_one_limit_in_place():
    from jitauth.licenses import CorruptRecord, plan_and_limit

    record = encode_license(License("a", "pro", entitlements=("x", "yy"),
                                    limits={"q1": 5, "q2": 7},
                                    attributes={"k": "v"}))

    assert plan_and_limit(record, "q2") == ("pro", 7)
    assert plan_and_limit(record, "q3") == ("pro", None)
    with pytest.raises(CorruptRecord):
        plan_and_limit(record[:30], "q2")
