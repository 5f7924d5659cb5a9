"""The audit trail through ``jitauth serve --workers 2``: a worker killed
under load, a graceful shutdown, the caller's trace id."""

import os
import signal
import subprocess
import threading
import time

import grpc
import pytest
from live_server import (
    JITAUTH,
    ServeProcess,
    load_cli,
    stub,
    wait_serving,
    write_sources,
)

from jitauth import audit
from jitauth.store import Store
from jitauth.v1 import authorizer_pb2 as pb

pytestmark = pytest.mark.timeout(180)

CLIENTS = 4
CALLS_PER_CLIENT = 600
LOAD_SECONDS = 30.0


@pytest.fixture
def data_dir(tmp_path):
    done = load_cli(tmp_path / "data", *write_sources(tmp_path / "src"))
    assert done.returncode == 0, done.stderr
    return str(tmp_path / "data")


def _view(account="acme", n=0):
    return pb.AuthorizeRequest(account_id=account,
                               subject=pb.Subject(id="s%d" % n),
                               action="reports.view")


def _trail(data_dir) -> tuple:
    """(records by sequence, grant ids in the grants database)."""
    store = Store(data_dir)
    try:
        with store.env.begin() as txn:
            first = audit.first_sequence(store, txn)
            last = audit.last_sequence(store, txn)
            records = [audit.read(store, txn, n)
                       for n in range(first, last + 1)] if first else []
            grant_ids = {key.hex() for key, _ in txn.items(store.grants)}
    finally:
        store.close()
    return records, grant_ids


def test_worker_killed_under_load_loses_no_allow_and_leaves_no_gap(
        data_dir):
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--workers", "2")
    try:
        wait_serving(server.address)
        victim = server.worker_pids(count=2)[0]
        answered = []         # (decision id, allowed, grant id)
        failures = []
        calls = [0]
        lock = threading.Lock()
        deadline = time.monotonic() + LOAD_SECONDS

        def client(n: int) -> None:
            channel, authorizer = stub(server.address, own_connection=True)
            with channel:
                for i in range(CALLS_PER_CLIENT):
                    if time.monotonic() > deadline:
                        return
                    account = ("acme", "initech", "nobody")[i % 3]
                    try:
                        r = authorizer.Authorize(_view(account, n),
                                                 timeout=5)
                        if r.grant.id and i % 2:
                            authorizer.Complete(
                                pb.CompleteRequest(grant_id=r.grant.id),
                                timeout=5)
                    except grpc.RpcError as exc:
                        failures.append(exc.code())
                        continue
                    with lock:
                        answered.append((r.decision_id, bool(r.grant.id),
                                         r.grant.id))
                        calls[0] += 1

        threads = [threading.Thread(target=client, args=(n,))
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        while calls[0] < CLIENTS * CALLS_PER_CLIENT // 3 and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(LOAD_SECONDS + 30)
        assert server.terminate() == 0
    finally:
        server.stop()

    records, grant_ids = _trail(data_dir)
    decisions = {r["decision_id"]: r for r in records
                 if r["event"] == "authorize"}
    granted = {r["grant_id"] for r in records if r["outcome"] == "granted"}
    allows = [a for a in answered if a[1]]
    lost_denies = [a for a in answered
                   if not a[1] and a[0] not in decisions]
    print("%d answers (%d allows), %d failed calls, %d records, %d denies "
          "lost with the killed worker's buffer"
          % (len(answered), len(allows), len(failures), len(records),
             len(lost_denies)))

    assert len(answered) > CLIENTS * CALLS_PER_CLIENT // 3
    assert "worker 0" in server.stderr and "exited with status -9" in \
        server.stderr
    # The sequence has no gaps ...
    assert records and None not in records
    assert [r["seq"] for r in records] == \
        list(range(records[0]["seq"], records[0]["seq"] + len(records)))
    # ... every grant has its record, every allow answered was recorded.
    assert grant_ids <= granted
    assert all(a[0] in decisions and decisions[a[0]]["grant_id"] == a[2]
               for a in allows)
    # Only denies of the killed worker can be lost (its unwritten buffer).
    assert all(failure in (grpc.StatusCode.UNAVAILABLE,
                           grpc.StatusCode.DEADLINE_EXCEEDED,
                           grpc.StatusCode.CANCELLED)
               for failure in failures)


def test_graceful_shutdown_loses_no_record(data_dir):
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--workers", "2")
    answers = []
    try:
        wait_serving(server.address)
        for n in range(4):
            channel, authorizer = stub(server.address, own_connection=True)
            with channel:
                for i in range(50):
                    answers.append(authorizer.Authorize(
                        _view(("initech", "nobody", "acme")[i % 3], n),
                        timeout=5))
        assert server.terminate() == 0
    finally:
        server.stop()

    records, _ = _trail(data_dir)
    assert sorted(r["decision_id"] for r in records) == \
        sorted(a.decision_id for a in answers)


def test_records_carry_the_callers_trace_id(data_dir):
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        wait_serving(server.address)
        channel, authorizer = stub(server.address)
        with channel:
            metadata = (("traceparent", "00-%s-00f067aa0ba902b7-01"
                         % trace),)
            allow = authorizer.Authorize(_view(), metadata=metadata,
                                         timeout=5)
            deny = authorizer.Authorize(_view("nobody"), metadata=metadata,
                                        timeout=5)
            untraced = authorizer.Authorize(_view("nobody"), timeout=5)
            authorizer.Complete(pb.CompleteRequest(grant_id=allow.grant.id),
                                metadata=metadata, timeout=5)
        assert server.terminate() == 0
    finally:
        server.stop()

    records, _ = _trail(data_dir)
    by_decision = {(r["decision_id"], r["event"]): r["trace_id"]
                   for r in records}
    assert by_decision == {
        (allow.decision_id, "authorize"): trace,
        (deny.decision_id, "authorize"): trace,
        (untraced.decision_id, "authorize"): "",
        (allow.decision_id, "complete"): trace,
    }


def test_audit_off_writes_no_record(data_dir):
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--audit", "off")
    try:
        wait_serving(server.address)
        channel, authorizer = stub(server.address)
        with channel:
            authorizer.Authorize(_view(), timeout=5)
            authorizer.Authorize(_view("nobody"), timeout=5)
        assert server.terminate() == 0
    finally:
        server.stop()

    records, grant_ids = _trail(data_dir)
    assert records == [] and len(grant_ids) == 1


def test_bad_audit_options_exit_2(data_dir):
    done = subprocess.run(
        JITAUTH + ["serve", "--data", data_dir, "--listen", "127.0.0.1:0",
                   "--audit-retention", "forever"],
        capture_output=True, text=True, timeout=30)

    assert done.returncode == 2
    assert "not a duration" in done.stderr
