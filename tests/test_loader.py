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
    ('{"account": "a", "plan": "pro", "valid_from": "2026-01-01"}',
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
