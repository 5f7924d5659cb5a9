"""Seats, quotas, renewal and the Admin service over real gRPC, with two
worker processes racing on one data directory."""

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

from jitauth.v1 import admin_pb2 as apb
from jitauth.v1 import admin_pb2_grpc
from jitauth.v1 import authorizer_pb2 as pb

SLOTS = 3
QUOTA = 20

POLICY = """\
quotas:
  exports.daily: {period: day}
plans:
  pro:
    limits: {exports.concurrent: %d}
    quotas: {exports.daily: %d}
rules:
  - id: export
    effect: allow
    action: reports.export
    grant: {ttl: 30s, max_lifetime: 2m, limit: exports.concurrent}
  - id: metered
    effect: allow
    action: reports.render
    grant: {ttl: 30s, quota: exports.daily}
""" % (SLOTS, QUOTA)

LICENSES = '{"account": "acme", "plan": "pro"}\n' \
           '{"account": "globex", "plan": "pro"}\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("licensing")
    data_dir = tmp / "data"
    done = load_cli(data_dir, *write_sources(tmp / "src", POLICY, LICENSES))
    assert done.returncode == 0, done.stderr
    serve = ServeProcess("--data", str(data_dir), "--listen", "127.0.0.1:0",
                         "--workers", "2")
    try:
        wait_serving(serve.address)
        yield serve.address
    finally:
        serve.stop()


def request(action, account="acme", subject="alice") -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(account_id=account, action=action,
                               subject=pb.Subject(id=subject))


def admin(target):
    channel = grpc.insecure_channel(target)
    return channel, admin_pb2_grpc.AdminStub(channel)


def run_threads(count: int, target) -> None:
    threads = [threading.Thread(target=target, args=(i,))
               for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def test_racing_clients_never_hold_more_than_the_limit(server):
    lock = threading.Lock()
    seen = {"live": 0, "peak": 0, "allowed": 0, "refused": 0, "other": []}

    def client(index: int) -> None:
        channel, client = stub(server, own_connection=True)
        with channel:
            for _ in range(15):
                r = client.Authorize(request("reports.export",
                                             account="globex"), timeout=10)
                if r.reason == pb.REASON_CONCURRENCY_LIMIT_REACHED:
                    with lock:
                        seen["refused"] += 1
                    continue
                if r.decision != pb.DECISION_ALLOW or not r.grant.id:
                    with lock:
                        seen["other"].append(r)
                    continue
                with lock:
                    seen["live"] += 1
                    seen["allowed"] += 1
                    seen["peak"] = max(seen["peak"], seen["live"])
                time.sleep(0.002)
                with lock:
                    seen["live"] -= 1
                client.Complete(pb.CompleteRequest(grant_id=r.grant.id),
                                timeout=10)

    run_threads(8, client)

    assert seen["other"] == []
    assert seen["allowed"] + seen["refused"] == 8 * 15
    assert 1 <= seen["peak"] <= SLOTS
    assert seen["allowed"] >= SLOTS


def test_racing_clients_take_exactly_the_free_slots(server):
    results = []

    def client(index: int) -> None:
        channel, client = stub(server, own_connection=True)
        with channel:
            for _ in range(5):
                results.append(client.Authorize(
                    request("reports.export", subject="u%d" % index),
                    timeout=10).reason)

    run_threads(8, client)

    assert results.count(pb.REASON_ALLOWED_BY_RULE) == SLOTS
    assert results.count(pb.REASON_CONCURRENCY_LIMIT_REACHED) == \
        8 * 5 - SLOTS
    channel, a = admin(server)
    with channel:
        live = a.ListGrants(apb.ListGrantsRequest(account_id="acme"),
                            timeout=10)
        assert len(live.grants) == SLOTS
        assert a.RevokeAccountGrants(apb.RevokeAccountGrantsRequest(
            account_id="acme"), timeout=10).revoked == SLOTS


def test_racing_clients_never_overshoot_a_quota(server):
    results = []

    def client(index: int) -> None:
        channel, client = stub(server, own_connection=True)
        with channel:
            for _ in range(6):
                results.append(client.Authorize(
                    request("reports.render"), timeout=10))

    run_threads(8, client)

    allowed = [r for r in results if r.decision == pb.DECISION_ALLOW]
    exhausted = [r for r in results
                 if r.reason == pb.REASON_QUOTA_EXHAUSTED]
    assert len(allowed) == QUOTA
    assert len(exhausted) == 8 * 6 - QUOTA
    assert all(r.HasField("retry_after") for r in exhausted)
    channel, a = admin(server)
    with channel:
        view = a.GetAccount(apb.GetAccountRequest(account_id="acme"),
                            timeout=10)
    (usage,) = [q for q in view.quotas if q.quota == "exports.daily"]
    assert (usage.consumed + usage.reserved, usage.limit) == (QUOTA, QUOTA)


def test_renew_and_admin_over_grpc(server):
    channel, client = stub(server)
    admin_channel, a = admin(server)
    with channel, admin_channel:
        grant = client.Authorize(request("reports.export", subject="r1"),
                                 timeout=10).grant

        renew = pb.RenewRequest(grant_id=grant.id, account_id="acme")
        renew.extend_by.FromSeconds(90)
        renewed = client.Renew(renew, timeout=10)
        assert renewed.expires_at.ToSeconds() > grant.expires_at.ToSeconds()

        renew.extend_by.FromSeconds(600)
        with pytest.raises(grpc.RpcError) as too_long:
            client.Renew(renew, timeout=10)
        renew.extend_by.FromSeconds(10)
        renew.account_id = "globex"
        with pytest.raises(grpc.RpcError) as wrong_account:
            client.Renew(renew, timeout=10)

        revoked = a.RevokeGrant(apb.RevokeGrantRequest(grant_id=grant.id),
                                timeout=10)
        renew.account_id = "acme"
        with pytest.raises(grpc.RpcError) as ended:
            client.Renew(renew, timeout=10)
        done = client.Complete(pb.CompleteRequest(grant_id=grant.id),
                               timeout=10)
        with pytest.raises(grpc.RpcError) as unknown:
            a.RevokeGrant(apb.RevokeGrantRequest(grant_id="ab" * 16),
                          timeout=10)

    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "extend_by" in too_long.value.details()
    assert wrong_account.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "account_id" in wrong_account.value.details()
    assert revoked.state == pb.GRANT_STATE_REVOKED
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revoked" in ended.value.details()
    assert (done.state, done.already_ended) == (pb.GRANT_STATE_REVOKED, True)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_explain_grants_account_and_kill_switch(server):
    import subprocess

    def cli(*args):
        return subprocess.run(JITAUTH + list(args) + ["--target", server],
                              capture_output=True, text=True, timeout=60)

    channel, client = stub(server)
    with channel:
        grant = client.Authorize(request("reports.export", subject="k1",
                                         account="globex"), timeout=10).grant
    explain = cli("explain", "--account", "globex", "--subject", "k2",
                  "--action", "reports.export")
    listing = cli("grants", "globex")
    account = cli("account", "globex")
    revoke = cli("revoke", "--account", "globex")
    after = cli("grants", "globex")

    assert explain.returncode == 0, explain.stderr
    assert "rule export (allow): applies" in explain.stdout
    assert "dry run" in explain.stdout
    assert grant.id in listing.stdout
    assert "plan pro, active" in account.stdout
    assert "seats exports.concurrent: 1 in use" in account.stdout
    assert "quota exports.daily" in account.stdout
    assert "revoked 1 live grant(s) of globex" in revoke.stdout
    assert "0 live grant(s)" in after.stdout
