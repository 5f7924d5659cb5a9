"""License deltas (``jitauth licenses apply``) and the bulk load.

Through the CLI on real LMDB environments; a running server shows that a
delta decides the very next request.
"""

import json
import os
import subprocess
import time

import pytest
from live_server import (
    JITAUTH,
    ServeProcess,
    export_request,
    stub,
    wait_serving,
    write_sources,
)

from jitauth.licenses import decode_license
from jitauth.loader import apply_delta, load
from jitauth.store import Store
from jitauth.v1 import authorizer_pb2 as pb

pytestmark = pytest.mark.timeout(180)


def run_cli(*args, timeout=60):
    return subprocess.run(JITAUTH + list(args), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def loaded(tmp_path):
    policy, licenses = write_sources(tmp_path / "source")
    data = str(tmp_path / "data")
    done = run_cli("load", "--data", data, "--policy", policy, "--licenses",
                   licenses)
    assert done.returncode == 0, done.stderr
    return data, tmp_path


def _delta(path, *lines) -> str:
    path.write_text("".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n"
        for line in lines))
    return str(path)


def _snapshot(data) -> tuple:
    """(active revision, {account: license}) of a store."""
    store = Store(data)
    try:
        with store.env.begin() as txn:
            return (store.current_revision(txn),
                    {k.decode(): decode_license(k.decode(), v)
                     for k, v in txn.items(store.licenses)})
    finally:
        store.close()


def test_a_delta_upserts_and_removes_without_a_new_revision(loaded):
    data, tmp = loaded
    delta = _delta(tmp / "delta.jsonl",
                   {"account": "umbrella", "plan": "pro"},
                   "# comments and blank lines are skipped",
                   "",
                   {"account": "globex", "plan": "pro",
                    "status": "suspended"},
                   {"account": "initech", "remove": True},
                   {"account": "never-was", "remove": True})

    done = run_cli("licenses", "apply", "--data", data, delta)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == \
        "1 added, 1 updated, 1 removed, 1 already absent"
    revision, licenses = _snapshot(data)
    assert revision == 1
    assert sorted(licenses) == ["acme", "globex", "umbrella"]
    assert licenses["globex"].plan == "pro"
    assert licenses["globex"].status.name == "SUSPENDED"


def test_a_delta_decides_the_next_request_of_a_running_server(loaded):
    data, tmp = loaded
    server = ServeProcess("--data", data, "--listen", "127.0.0.1:0",
                          "--workers", "2")
    try:
        wait_serving(server.address)
        channel, client = stub(server.address)
        with channel:
            before = client.Authorize(export_request("umbrella"), timeout=5)
            delta = _delta(tmp / "delta.jsonl",
                           {"account": "umbrella", "plan": "pro"},
                           {"account": "acme", "remove": True})
            done = run_cli("licenses", "apply", "--data", data, delta)
            assert done.returncode == 0, done.stderr
            added = client.Authorize(export_request("umbrella"), timeout=5)
            removed = client.Authorize(export_request("acme"), timeout=5)
    finally:
        server.stop()

    assert before.reason == pb.REASON_NO_LICENSE
    assert added.decision == pb.DECISION_ALLOW
    assert removed.reason == pb.REASON_NO_LICENSE
    assert added.revision == removed.revision == 1


@pytest.mark.parametrize("lines, errors", [
    (['{"account": "umbrella", "plan": "pro"}', '{"account": "x", "plan"'],
     ["delta.jsonl:2: json: "]),
    ([{"account": "umbrella", "plan": "gold"}],
     ["delta.jsonl:1: plan: plan 'gold' is not defined in the policy"]),
    ([{"account": "umbrella", "plan": "pro"},
      {"account": "umbrella", "remove": True}],
     ["delta.jsonl:2: account: account 'umbrella' is already changed at "
      "line 1"]),
    ([{"account": "acme", "remove": "yes"}],
     ["delta.jsonl:1: remove: must be true"]),
    ([{"account": "acme", "remove": True, "plan": "pro"}],
     ["delta.jsonl:1: plan: a removal has only account and remove"]),
    ([{"remove": True}], ["delta.jsonl:1: account: must be a non-empty"]),
    ([{"account": "a", "plan": "pro", "valid_until": "soon"}],
     ["delta.jsonl:1: valid_until: 'soon' is not an RFC 3339 timestamp"]),
    ([{"account": "a", "plan": "pro", "colour": "red"}],
     ["delta.jsonl:1: colour: unknown field"]),
    (["[1, 2]", {"account": "a", "plan": "pro"}, "{", "7"],
     ["delta.jsonl:1: line: each line must be a JSON object",
      "delta.jsonl:3: json: ", "delta.jsonl:4: line: each line must be"]),
])
def test_an_invalid_delta_fails_with_every_error_and_changes_nothing(
        loaded, lines, errors):
    data, tmp = loaded
    before = _snapshot(data)

    done = run_cli("licenses", "apply", "--data", data,
                   _delta(tmp / "delta.jsonl", *lines))

    assert done.returncode == 2
    assert done.stdout == ""
    reported = done.stderr.splitlines()
    assert len(reported) == len(errors), done.stderr
    for line, error in zip(reported, errors, strict=True):
        assert line.startswith("error: ") and error in line, done.stderr
    assert _snapshot(data) == before


def test_a_delta_that_is_not_utf8_or_missing_is_refused(loaded):
    data, tmp = loaded
    (tmp / "latin1.jsonl").write_bytes(
        b'{"account": "caf\xe9", "plan": "pro"}\n')

    bad = run_cli("licenses", "apply", "--data", data,
                  str(tmp / "latin1.jsonl"))
    missing = run_cli("licenses", "apply", "--data", data,
                      str(tmp / "nope.jsonl"))
    no_data = run_cli("licenses", "apply", "--data", str(tmp / "none"),
                      str(tmp / "latin1.jsonl"))

    assert bad.returncode == missing.returncode == no_data.returncode == 2
    assert "latin1.jsonl:1: file: not UTF-8" in bad.stderr
    assert "nope.jsonl:0: file: " in missing.stderr
    assert "no jitauth data in" in no_data.stderr


def test_a_small_delta_on_a_large_store_takes_milliseconds(tmp_path):
    """100,000 accounts; a delta of 3 is one small transaction: fast, and
    the data file does not grow by a rewrite of the licenses."""
    policy, _ = write_sources(tmp_path / "source")
    licenses = tmp_path / "many.jsonl"
    with open(licenses, "w") as f:
        for n in range(100_000):
            f.write('{"account": "acct-%06d", "plan": "pro"}\n' % n)
    data = str(tmp_path / "data")
    load(data, policy, [str(licenses)])
    size = os.path.getsize(os.path.join(data, "data.mdb"))
    delta = _delta(tmp_path / "delta.jsonl",
                   {"account": "acct-000007", "plan": "free"},
                   {"account": "acct-050000", "remove": True},
                   {"account": "newcomer", "plan": "pro"})

    started = time.perf_counter()
    counts = apply_delta(data, delta)
    elapsed = time.perf_counter() - started

    assert counts == {"added": 1, "updated": 1, "removed": 1, "absent": 0}
    assert elapsed < 0.5, "%.1f ms" % (elapsed * 1000)
    assert os.path.getsize(os.path.join(data, "data.mdb")) < size + (1 << 20)
    revision, stored = _snapshot(data)
    assert len(stored) == 100_000
    assert stored["acct-000007"].plan == "free"
    assert "acct-050000" not in stored and "newcomer" in stored


def test_a_delta_checks_plans_against_the_active_policy(loaded):
    data, tmp = loaded
    smaller = tmp / "smaller.yaml"
    smaller.write_text("plans: {basic: {entitlements: [reports.view]}}\n"
                       "rules: [{id: v, effect: allow, action: reports.view,"
                       " entitlement: reports.view}]\n")
    assert run_cli("apply", "--data", data, "--policy",
                   str(smaller)).returncode == 0

    done = run_cli("licenses", "apply", "--data", data,
                   _delta(tmp / "delta.jsonl",
                          {"account": "umbrella", "plan": "pro"}))

    assert done.returncode == 2
    assert "plan 'pro' is not defined in the policy" in done.stderr


def test_bulk_load_draws_progress_only_when_asked(tmp_path):
    policy, _ = write_sources(tmp_path / "source")
    licenses = tmp_path / "many.jsonl"
    with open(licenses, "w") as f:
        for n in range(20_000):
            f.write('{"account": "acct-%06d", "plan": "free"}\n' % n)
    data = str(tmp_path / "data")

    quiet = run_cli("--log-level", "WARNING", "load", "--data", data,
                    "--policy", policy, "--licenses", str(licenses))
    shown = run_cli("--log-level", "WARNING", "load", "--data", data,
                    "--policy", policy, "--licenses", str(licenses),
                    "--progress")

    assert quiet.returncode == shown.returncode == 0
    assert quiet.stderr == ""
    assert "reading" in shown.stderr and "writing" in shown.stderr
    assert "100%  20,000 accounts" in shown.stderr
    assert shown.stdout.strip() == "2"


def test_bulk_load_names_both_places_of_a_duplicate_account(tmp_path):
    policy, _ = write_sources(tmp_path / "source")
    first = _delta(tmp_path / "one.jsonl",
                   *[{"account": "a%d" % n, "plan": "pro"}
                     for n in range(5)])
    second = _delta(tmp_path / "two.jsonl", {"account": "b", "plan": "pro"},
                    {"account": "a3", "plan": "free"})
    data = str(tmp_path / "data")

    done = run_cli("load", "--data", data, "--policy", policy,
                   "--licenses", first, second)

    assert done.returncode == 2
    assert "two.jsonl:2: account: account 'a3' is already licensed at " \
        "%s:4" % first in done.stderr
    assert not os.path.exists(os.path.join(data, "data.mdb"))


def test_a_delta_validates_every_line_as_load_does(loaded):
    """Odd values a load refuses are refused, each named, by a delta."""
    data, tmp = loaded
    before = _snapshot(data)
    lines = [
        '{"account": "a", "plan": "pro", "status": ["active"]}',
        '{"account": "b", "plan": "pro", "status": {}}',
        '{"account": "c", "plan": "pro", "status": "revoked",'
        ' "status": "active"}',
        '{"account": "acme", "remove": true, "remove": true}',
        '{"account": "d", "plan": "pro", "limits": {"x": %s}}' % ("9" * 5000),
        '{"account": "e", "plan": "pro", "attributes": {"n": %s}}'
        % ("1" * 5000),
        '{"account": "f", "plan": "pro", "attributes": {"n": 1e300}}',
        '{"account": "g", "plan": "pro", "valid_from": "20260101T000000Z"}',
        '{"account": "h", "plan": "pro",'
        ' "valid_until": "2026-01-01 00:00:00Z"}',
        '{"account": "\\ud800", "remove": true}',
        "[" * 100_000,
    ]
    expected = [
        "delta.jsonl:1: status: must be one of",
        "delta.jsonl:2: status: must be one of",
        "delta.jsonl:3: status: given twice",
        "delta.jsonl:4: remove: given twice",
        "delta.jsonl:5: limits.x: must be a whole number",
        "delta.jsonl:6: attributes.n: 1111",
        "delta.jsonl:7: attributes.n: 1000",
        "delta.jsonl:8: valid_from: '20260101T000000Z' is not an RFC 3339",
        "delta.jsonl:9: valid_until: '2026-01-01 00:00:00Z' is not an RFC",
        "delta.jsonl:10: account: holds a lone surrogate",
        "delta.jsonl:11: json: nested too deeply",
    ]

    done = run_cli("licenses", "apply", "--data", data,
                   _delta(tmp / "delta.jsonl", *lines))

    assert done.returncode == 2, done.stderr
    reported = done.stderr.splitlines()
    assert len(reported) == len(expected), done.stderr
    for line, error in zip(reported, expected, strict=True):
        assert line.startswith("error: ") and error in line, done.stderr
    assert "numeric comparisons read at most 32" in reported[5]
    assert _snapshot(data) == before


def test_a_delta_stores_float_attributes_as_plain_decimals(loaded):
    data, tmp = loaded
    delta = _delta(tmp / "delta.jsonl",
                   {"account": "umbrella", "plan": "pro",
                    "valid_from": "1969-12-31T23:59:59.9995Z",
                    "attributes": {"tiny": 1e-07, "big": 1e16,
                                   "whole": 2.0}})

    assert apply_delta(data, delta)["added"] == 1

    umbrella = _snapshot(data)[1]["umbrella"]
    assert umbrella.attributes == {"tiny": "0.0000001",
                                   "big": "10000000000000000", "whole": "2"}
    assert umbrella.valid_from_ms == -1


@pytest.mark.parametrize("command", [("apply",), ("shadow", "apply")])
def test_a_network_with_a_scope_id_is_refused_before_install(loaded,
                                                             command):
    data, tmp = loaded
    policy = tmp / "scoped.yaml"
    policy.write_text("plans: {pro: {}}\n"
                      "rules:\n"
                      "  - id: local\n"
                      "    effect: allow\n"
                      "    action: reports.view\n"
                      "    when:\n"
                      "      - attr: context.ip\n"
                      "        cidr: [\"10.0.0.0/8\", \"fe80::%eth0/64\"]\n")
    before = _snapshot(data)

    done = run_cli(*command, "--data", data, "--policy", str(policy))

    assert done.returncode == 2, done.stderr
    assert "scoped.yaml:8: rules[0].when[0].cidr[1]: 'fe80::%eth0/64': " \
        "a scope id" in done.stderr
    assert _snapshot(data) == before
    assert "shadow candidate" not in done.stdout
