"""``jitauth serve`` as separate processes over one data directory."""

import multiprocessing
import os
import signal
import time

import grpc
import pytest
from live_server import (
    POLICY,
    ServeProcess,
    export_request,
    load_cli,
    stub,
    wait_serving,
    write_sources,
)

from jitauth.v1 import authorizer_pb2 as pb

pytestmark = pytest.mark.timeout(120)

# One slot, held for 60 s, so that a race for it has exactly one winner.
ONE_SLOT_POLICY = POLICY.replace("exports.concurrent: 2",
                                 "exports.concurrent: 1")


def _load(tmp_path, policy=POLICY):
    data_dir = tmp_path / "data"
    done = load_cli(data_dir, *write_sources(tmp_path / "source", policy))
    assert done.returncode == 0, done.stderr
    return str(data_dir)


@pytest.fixture
def two_servers(tmp_path):
    """Two ``jitauth serve`` processes on two ports, one data directory."""
    data_dir = _load(tmp_path, ONE_SLOT_POLICY)
    servers = []
    try:
        for _ in range(2):
            servers.append(ServeProcess("--data", data_dir, "--listen",
                                        "127.0.0.1:0", "--workers", "1"))
        for server in servers:
            wait_serving(server.address)
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_issue_on_one_process_complete_on_the_other(two_servers):
    first, second = two_servers
    pids = [first.worker_pids()[0], second.worker_pids()[0]]
    channel_a, client_a = stub(first.address, own_connection=True)
    channel_b, client_b = stub(second.address, own_connection=True)

    with channel_a, channel_b:
        grant = client_a.Authorize(export_request(), timeout=5).grant
        done = client_b.Complete(pb.CompleteRequest(grant_id=grant.id),
                                 timeout=5)
        again = client_a.Complete(pb.CompleteRequest(grant_id=grant.id),
                                  timeout=5)

    assert pids[0] != pids[1]
    assert grant.id
    assert done.state == pb.GRANT_STATE_COMPLETED
    assert not done.already_ended
    assert again.already_ended


def _race(target: str, start_at: float, results) -> None:
    channel, client = stub(target, own_connection=True)
    with channel:
        client.Authorize(export_request(account="globex"), timeout=5)
        time.sleep(max(0.0, start_at - time.time()))
        response = client.Authorize(export_request(), timeout=5)
    results.put((target, response.decision, response.reason))


def test_last_slot_is_taken_by_exactly_one_process(two_servers):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 2.0
    racers = [ctx.Process(target=_race, args=(s.address, start_at, results))
              for s in two_servers]

    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=30) for _ in racers]
    for racer in racers:
        racer.join(10)

    decisions = sorted(decision for _, decision, _ in outcomes)
    assert decisions == [pb.DECISION_ALLOW, pb.DECISION_DENY]
    assert pb.REASON_CONCURRENCY_LIMIT_REACHED in [r for _, _, r in outcomes]


def test_workers_share_one_port_and_stop_on_sigterm(tmp_path):
    data_dir = _load(tmp_path)
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--workers", "2")
    try:
        pids = server.worker_pids(count=2)
        assert len(set(pids)) == 2
        wait_serving(server.address)

        channels = [stub(server.address, own_connection=True)
                    for _ in range(6)]
        grants = [client.Authorize(export_request(action="reports.view"),
                                   timeout=5).grant.id
                  for _, client in channels]
        pairs = zip(channels, reversed(grants), strict=True)
        completed = [client.Complete(pb.CompleteRequest(grant_id=g),
                                     timeout=5).state
                     for (_, client), g in pairs]
        for channel, _ in channels:
            channel.close()

        assert all(grants)
        assert set(completed) == {pb.GRANT_STATE_COMPLETED}
        assert server.terminate() == 0
        for pid in pids:
            assert not _alive(pid)
        assert "stopped" in server.stderr
    finally:
        server.stop()


def test_a_crashed_worker_is_restarted(tmp_path):
    data_dir = _load(tmp_path)
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--workers", "1")
    try:
        (pid,) = server.worker_pids()
        wait_serving(server.address)

        os.kill(pid, signal.SIGKILL)
        server.read_stderr_until(r"worker 0 restarted")
        (new_pid,) = server.worker_pids()
        wait_serving(server.address)

        assert new_pid != pid
        channel, client = stub(server.address, own_connection=True)
        with channel:
            response = client.Authorize(export_request(), timeout=5)
        assert response.decision == pb.DECISION_ALLOW
        assert server.terminate() == 0
    finally:
        server.stop()


def test_serve_answers_unavailable_without_data(tmp_path):
    server = ServeProcess("--data", str(tmp_path / "none"), "--listen",
                          "127.0.0.1:0")
    try:
        server.worker_pids()
        channel, client = stub(server.address)
        with channel:
            with pytest.raises(grpc.RpcError) as caught:
                client.Authorize(export_request(), timeout=5)

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.terminate() == 0
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until its parent reaps it.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
