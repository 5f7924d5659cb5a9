"""Policy revisions: ``jitauth apply``, ``revisions`` and ``rollback``.

Through the CLI on real LMDB environments, and a switch under load on a
``jitauth serve --workers 2``.
"""

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from live_server import (
    JITAUTH,
    POLICY,
    ServeProcess,
    export_request,
    stub,
    wait_serving,
    write_sources,
)

from jitauth.store import Store

pytestmark = pytest.mark.timeout(180)

# POLICY with the id of its view rule changed: answers show which decided.
POLICY_B = POLICY.replace("id: view\n", "id: view-b\n")


def run_cli(*args, timeout=60):
    return subprocess.run(JITAUTH + list(args), capture_output=True,
                          text=True, timeout=timeout)


def _listed(stdout: str) -> list:
    """Revision numbers of a ``jitauth revisions`` listing, as shown."""
    return [int(line.lstrip("* ").split()[0])
            for line in stdout.splitlines()[1:]]


@pytest.fixture
def loaded(tmp_path):
    """A data directory loaded once from live_server's sources."""
    policy, licenses = write_sources(tmp_path / "source")
    data = str(tmp_path / "data")
    done = run_cli("load", "--data", data, "--policy", policy, "--licenses",
                   licenses)
    assert done.returncode == 0, done.stderr
    return data, tmp_path


def _write(path, text) -> str:
    path.write_text(text)
    return str(path)


def _state(data) -> tuple:
    """(active revision, stored revision numbers, licenses) of a store."""
    store = Store(data)
    try:
        with store.env.begin() as txn:
            return (store.current_revision(txn),
                    [int.from_bytes(k, "big")
                     for k, _ in txn.items(store.revisions)],
                    dict(txn.items(store.licenses)))
    finally:
        store.close()


def _policy_rules(data, revision) -> list:
    store = Store(data)
    try:
        with store.env.begin() as txn:
            return [r["id"] for r in store.read_policy(txn,
                                                       revision)["rules"]]
    finally:
        store.close()


def test_apply_installs_a_revision_and_keeps_the_licenses(loaded):
    data, tmp = loaded
    _, _, licenses_before = _state(data)

    done = run_cli("apply", "--data", data, "--policy",
                   _write(tmp / "b.yaml", POLICY_B))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    active, stored, licenses = _state(data)
    assert (active, stored) == (2, [1, 2])
    assert licenses == licenses_before
    assert "view-b" in _policy_rules(data, 2)


def test_revisions_lists_number_time_file_rules_and_the_active_one(loaded):
    data, tmp = loaded
    policy_b = _write(tmp / "b.yaml", POLICY_B)
    run_cli("apply", "--data", data, "--policy", policy_b)

    done = run_cli("revisions", "--data", data)

    assert done.returncode == 0, done.stderr
    header, newest, oldest = done.stdout.splitlines()
    assert "revision" in header and "rules" in header
    assert newest.startswith("*") and oldest.startswith(" ")
    assert _listed(done.stdout) == [2, 1]
    assert "apply" in newest and policy_b in newest
    assert newest.split()[4] == "3"          # rules
    assert "load" in oldest
    assert time.strftime("%Y-%m-%d", time.gmtime()) in newest


def test_only_the_last_n_revisions_are_kept(loaded):
    data, tmp = loaded
    policy_b = _write(tmp / "b.yaml", POLICY_B)

    for _ in range(4):
        assert run_cli("apply", "--data", data, "--policy", policy_b,
                       "--keep", "3").returncode == 0

    active, stored, _ = _state(data)
    assert (active, stored) == (5, [3, 4, 5])
    listed = run_cli("revisions", "--data", data).stdout
    assert _listed(listed) == [5, 4, 3]


def test_rollback_installs_a_copy_under_a_new_number(loaded):
    data, tmp = loaded
    run_cli("apply", "--data", data, "--policy",
            _write(tmp / "b.yaml", POLICY_B))

    done = run_cli("rollback", "--data", data, "--to", "1")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    active, stored, _ = _state(data)
    assert (active, stored) == (3, [1, 2, 3])
    assert _policy_rules(data, 3) == _policy_rules(data, 1)
    listing = run_cli("revisions", "--data", data).stdout
    assert "rollback 1" in listing.splitlines()[1]


@pytest.mark.parametrize("target, words", [
    ("1", "revision 1 no longer exists: it was pruned"),
    ("9", "revision 9 does not exist (the newest is 4"),
    ("0", "--to: must be from 1 to"),
    ("-1", "--to: must be from 1 to"),
])
def test_rollback_to_a_missing_revision_fails_and_changes_nothing(
        loaded, target, words):
    data, tmp = loaded
    policy_b = _write(tmp / "b.yaml", POLICY_B)
    for _ in range(3):
        run_cli("apply", "--data", data, "--policy", policy_b, "--keep", "2")
    before = _state(data)

    done = run_cli("rollback", "--data", data, "--to", target)

    assert done.returncode == 2
    assert done.stdout == ""
    assert words in done.stderr
    assert _state(data) == before


@pytest.mark.parametrize("policy, where", [
    (POLICY.replace("ttl: 5s", "ttl: soon"), "b.yaml:19: rules[1].grant.ttl"),
    (POLICY.replace("entitlement: reports.view\n",
                    "entitlement: reports.fly\n"),
     "b.yaml:23: rules[2].entitlement: entitlement 'reports.fly'"),
    (POLICY + "  - {id: view, effect: deny, action: x}\n",
     "b.yaml:25: rules[3].id: rule id 'view' is already used at line 20"),
    ("rules: [\n", "b.yaml:2: yaml"),
])
def test_apply_of_an_invalid_policy_fails_and_changes_nothing(
        loaded, policy, where):
    data, tmp = loaded
    before = _state(data)

    done = run_cli("apply", "--data", data, "--policy",
                   _write(tmp / "b.yaml", policy))

    assert done.returncode == 2
    assert done.stdout == ""
    assert where in done.stderr, done.stderr
    assert _state(data) == before


def test_commands_without_data_fail_precisely(tmp_path):
    policy, _ = write_sources(tmp_path / "source")
    missing = str(tmp_path / "nothing")

    for args in (["apply", "--data", missing, "--policy", policy],
                 ["rollback", "--data", missing, "--to", "1"],
                 ["revisions", "--data", missing]):
        done = run_cli(*args)
        assert done.returncode == 2, args
        assert "no jitauth data in %s" % missing in done.stderr

    assert not (tmp_path / "nothing").exists()


def test_load_prunes_too(loaded):
    data, tmp = loaded
    policy, licenses = write_sources(tmp / "source")

    for _ in range(3):
        run_cli("load", "--data", data, "--policy", policy, "--licenses",
                licenses, "--keep", "2")

    assert _state(data)[:2] == (4, [3, 4])


def test_a_switch_under_load_fails_no_call_and_reaches_every_connection(
        loaded):
    """Several connections over 2 workers, one call in flight each, while
    apply switches policies twice: no call fails, every connection sees
    each new revision, and no answer pairs a revision with another
    revision's rule."""
    data, tmp = loaded
    policies = {"b": _write(tmp / "b.yaml", POLICY_B),
                "a": _write(tmp / "a.yaml", POLICY)}
    rule_of = {1: "view"}
    server = ServeProcess("--data", data, "--listen", "127.0.0.1:0",
                          "--workers", "2")
    stop = threading.Event()
    connections = 6
    answers = [[] for _ in range(connections)]
    failures = []

    def drive(index):
        channel, client = stub(server.address, own_connection=True)
        request = export_request(action="reports.view", request_id="",
                                 dry_run=True)
        deadline = time.monotonic() + 60
        with channel:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = client.Authorize(request, timeout=5)
                except grpc.RpcError as exc:
                    failures.append(exc.code())
                    continue
                answers[index].append((answer.revision, answer.rule_id))

    threads = [threading.Thread(target=drive, args=(i,))
               for i in range(connections)]
    try:
        wait_serving(server.address)
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        for name, rule in (("b", "view-b"), ("a", "view")):
            done = run_cli("apply", "--data", data, "--policy",
                           policies[name])
            assert done.returncode == 0, done.stderr
            revision = int(done.stdout)
            rule_of[revision] = rule
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    a and a[-1][0] == revision for a in answers):
                time.sleep(0.01)
            assert all(a[-1][0] == revision for a in answers)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()

    assert failures == []
    assert sum(map(len, answers)) > 100
    for per_connection in answers:
        revisions = [revision for revision, _ in per_connection]
        assert revisions == sorted(revisions)
        # Which rule came with which revision is checked by the next test.
        assert {rule for _, rule in per_connection} <= set(rule_of.values())


def test_no_answer_pairs_a_revision_with_another_revisions_rule(loaded):
    """Eight threads deciding on one Authorizer while the policy switches
    40 times between two that differ in the id of the deciding rule."""
    from jitauth.authorizer import Authorizer
    from jitauth.model import AuthorizeInput
    from jitauth.revisions import apply

    data, tmp = loaded
    policies = [(_write(tmp / "b.yaml", POLICY_B), "view-b"),
                (_write(tmp / "a.yaml", POLICY), "view")]
    rule_of = {1: "view"}
    request = AuthorizeInput(account_id="acme", subject_id="alice",
                             action="reports.view", dry_run=True)
    answers = []
    stop = threading.Event()
    authorizer = Authorizer(data)

    def decide():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            answer = authorizer.authorize(request)
            answers.append((answer.revision, answer.rule_id))

    threads = [threading.Thread(target=decide) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for number in range(40):
            policy, rule = policies[number % 2]
            rule_of[apply(data, policy)] = rule
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        authorizer.close()

    mixed = [a for a in answers if rule_of[a[0]] != a[1]]
    assert mixed == [], "%d of %d answers" % (len(mixed), len(answers))


def test_apply_bench_reports_a_switch_without_failures(tmp_path):
    """The bench script itself, briefly: JSON out, the switch observed."""
    bench = os.path.join(os.path.dirname(__file__), "..", "bench",
                         "apply_bench.py")
    done = subprocess.run(
        [sys.executable, bench, "--rounds", "2",
         "--connections", "4", "--interval", "0.3", "--max-seconds", "60"],
        capture_output=True, text=True, timeout=120)

    figures = json.loads(done.stdout)
    assert figures["failed_calls"] == 0, done.stderr
    assert [r["connections_switched"] for r in figures["rounds"]] == [4, 4]
