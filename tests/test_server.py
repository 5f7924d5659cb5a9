"""The Authorizer service through a real in-process server on port 0."""

import logging
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from live_server import (
    export_request,
    health_status,
    load_cli,
    stub,
    write_sources,
)

from jitauth.authorizer import Authorizer
from jitauth.loader import load
from jitauth.server import SERVICE_NAME, Service
from jitauth.v1 import authorizer_pb2 as pb

NOW = 1_780_000_000_000  # 2026-05-28T20:26:40Z
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Clock:
    def __init__(self, now: int = NOW):
        self.now = now

    def __call__(self) -> int:
        return self.now


def start(data_dir, clock=None, matcher="compiled", **kwargs) -> Service:
    def open_authorizer(path, name):
        return Authorizer(path, matcher=name, clock=clock or Clock())

    service = Service(str(data_dir), matcher=matcher,
                      open_authorizer=open_authorizer, **kwargs)
    service.start()
    return service


@pytest.fixture
def data_dir(tmp_path):
    policy_path, licenses_path = write_sources(tmp_path / "source")
    load(str(tmp_path / "data"), policy_path, [licenses_path])
    return tmp_path / "data"


@pytest.fixture(params=["compiled", "reference"])
def server(request, data_dir):
    clock = Clock()
    service = start(data_dir, clock, matcher=request.param)
    channel, client = stub("127.0.0.1:%d" % service.port)
    yield client, clock, channel
    channel.close()
    service.stop(0)


def test_authorize_and_complete_round_trip(server):
    client, clock, _ = server

    response = client.Authorize(export_request(), timeout=5)

    assert response.decision == pb.DECISION_ALLOW
    assert response.reason == pb.REASON_ALLOWED_BY_RULE
    assert response.rule_id == "export"
    assert response.revision == 1
    assert response.message
    assert len(response.decision_id) >= 16
    assert len(response.grant.id) == 32
    assert response.grant.expires_at.ToMilliseconds() == NOW + 5000

    clock.now += 1000
    done = client.Complete(pb.CompleteRequest(
        grant_id=response.grant.id, outcome=pb.OUTCOME_FAILURE), timeout=5)

    assert done.grant_id == response.grant.id
    assert done.state == pb.GRANT_STATE_COMPLETED
    assert not done.already_ended
    assert done.outcome == pb.OUTCOME_FAILURE
    assert done.account_id == "acme"
    assert done.action == "reports.export"
    assert done.issued_at.ToMilliseconds() == NOW
    assert done.expires_at.ToMilliseconds() == NOW + 5000
    assert done.ended_at.ToMilliseconds() == NOW + 1000


@pytest.mark.parametrize("account, action, reason, rule", [
    ("globex", "reports.export", pb.REASON_NOT_ENTITLED, "export"),
    ("initech", "reports.export", pb.REASON_LICENSE_INACTIVE, ""),
    ("nobody", "reports.export", pb.REASON_NO_LICENSE, ""),
    ("acme", "reports.delete", pb.REASON_DENIED_BY_RULE, "no-deletes"),
    ("acme", "billing.pay", pb.REASON_NO_MATCHING_RULE, ""),
])
def test_a_deny_is_an_ok_response(server, account, action, reason, rule):
    client, _, _ = server

    response = client.Authorize(export_request(account, action=action),
                                timeout=5)

    assert response.decision == pb.DECISION_DENY
    assert response.reason == reason
    assert response.rule_id == rule
    assert response.revision == 1
    assert not response.HasField("grant")
    assert response.message


@pytest.mark.parametrize("overrides, field", [
    ({"account_id": ""}, "account_id"),
    ({"subject": pb.Subject(roles=["analyst"])}, "subject.id"),
    ({"action": ""}, "action"),
    ({"account_id": "a" * 257}, "account_id"),
    ({"action": "x" * 257}, "action"),
    ({"resource": pb.Resource(type="report", id="r" * 257)}, "resource.id"),
    ({"subject": pb.Subject(id="alice", roles=["r"] * 65)},
     "subject.roles"),
    ({"context": {"k%d" % i: "v" for i in range(65)}}, "context"),
    ({"context": {"note": "v" * 5000}}, 'context["note"]'),
    ({"context": {"k" * 129: "v"}}, "context["),
    ({"subject": pb.Subject(id="alice", attributes={"x": "y" * 70000})},
     "request"),
])
def test_invalid_requests_name_the_field(server, overrides, field):
    client, _, _ = server

    with pytest.raises(grpc.RpcError) as caught:
        client.Authorize(export_request(**overrides), timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)


def _raw(channel, method: str):
    # No serializers: the bytes go out exactly as given.
    return channel.unary_unary("/jitauth.v1.Authorizer/" + method)


@pytest.mark.parametrize("build, placeholder, field", [
    (lambda r: r.subject.attributes.__setitem__("x", "@@"), b"@@",
     'subject.attributes["x"]'),
    (lambda r: r.resource.attributes.__setitem__("owner", "@@"), b"@@",
     'resource.attributes["owner"]'),
    (lambda r: r.context.__setitem__("@@", "v"), b"@@", "context"),
    (lambda r: r.context.__setitem__("region", "@@"), b"@@",
     'context["region"]'),
    (lambda r: r.subject.roles.append("@@"), b"@@", "subject.roles[1]"),
    (lambda r: setattr(r, "account_id", "@@"), b"@@", "account_id"),
    (lambda r: setattr(r, "request_id", "@@"), b"@@", "request_id"),
])
def test_invalid_utf8_names_the_field(server, build, placeholder, field):
    _, _, channel = server
    request = export_request()
    build(request)
    data = request.SerializeToString()
    assert data.count(placeholder) == 1
    data = data.replace(placeholder, b"\xc3\x28")

    with pytest.raises(grpc.RpcError) as caught:
        _raw(channel, "Authorize")(data, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == field + ": not valid UTF-8"


def test_garbage_bytes_are_invalid_argument(server):
    _, _, channel = server

    with pytest.raises(grpc.RpcError) as caught:
        _raw(channel, "Authorize")(b"\x12\xff\xff\xff", timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request:")


def test_complete_unknown_grant_is_not_found(server):
    client, _, _ = server

    with pytest.raises(grpc.RpcError) as caught:
        client.Complete(pb.CompleteRequest(grant_id="ab" * 16), timeout=5)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("grant_id", ["", "xyz", "ab" * 17])
def test_complete_malformed_grant_id_is_invalid(server, grant_id):
    client, _, _ = server

    with pytest.raises(grpc.RpcError) as caught:
        client.Complete(pb.CompleteRequest(grant_id=grant_id), timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("grant_id")


def test_complete_invalid_utf8_grant_id(server):
    _, _, channel = server
    data = pb.CompleteRequest(grant_id="@@").SerializeToString()

    with pytest.raises(grpc.RpcError) as caught:
        _raw(channel, "Complete")(data.replace(b"@@", b"\xff\xfe"),
                                  timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "grant_id: not valid UTF-8"


def test_complete_twice_reports_already_ended(server):
    client, clock, _ = server
    grant = client.Authorize(export_request(), timeout=5).grant
    first = client.Complete(pb.CompleteRequest(grant_id=grant.id), timeout=5)
    clock.now += 500

    second = client.Complete(pb.CompleteRequest(
        grant_id=grant.id, outcome=pb.OUTCOME_CANCELLED), timeout=5)

    assert first.state == pb.GRANT_STATE_COMPLETED
    assert first.outcome == pb.OUTCOME_SUCCESS
    assert not first.already_ended
    assert second.state == pb.GRANT_STATE_COMPLETED
    assert second.already_ended
    assert second.outcome == pb.OUTCOME_SUCCESS
    assert second.ended_at == first.ended_at


def test_complete_expired_grant_reports_expired(server):
    client, clock, _ = server
    grant = client.Authorize(export_request(), timeout=5).grant
    clock.now += 5000

    done = client.Complete(pb.CompleteRequest(grant_id=grant.id), timeout=5)

    assert done.state == pb.GRANT_STATE_EXPIRED
    assert done.already_ended
    assert done.ended_at.ToMilliseconds() == NOW + 5000


def test_a_repeated_request_id_replays_the_first_answer(server):
    client, _, _ = server
    first = client.Authorize(export_request(request_id="once"), timeout=5)

    again = client.Authorize(export_request(request_id="once"), timeout=5)

    assert again.decision == pb.DECISION_ALLOW
    assert again.replayed and not first.replayed
    assert again.grant.id == first.grant.id


def test_dry_run_issues_no_grant(server):
    client, _, _ = server

    response = client.Authorize(export_request(dry_run=True), timeout=5)

    assert response.decision == pb.DECISION_ALLOW
    assert response.dry_run
    assert not response.grant.id


def test_concurrency_limit_and_release(server):
    client, clock, _ = server
    first = client.Authorize(export_request(), timeout=5)
    second = client.Authorize(export_request(), timeout=5)

    third = client.Authorize(export_request(), timeout=5)

    assert first.decision == second.decision == pb.DECISION_ALLOW
    assert third.decision == pb.DECISION_DENY
    assert third.reason == pb.REASON_CONCURRENCY_LIMIT_REACHED
    assert third.rule_id == "export"
    assert third.HasField("retry_after")

    client.Complete(pb.CompleteRequest(grant_id=first.grant.id), timeout=5)
    fourth = client.Authorize(export_request(), timeout=5)
    assert fourth.decision == pb.DECISION_ALLOW

    clock.now += 5000
    fifth = client.Authorize(export_request(), timeout=5)
    assert fifth.decision == pb.DECISION_ALLOW


def test_health_and_unavailable_until_data_is_loaded(tmp_path):
    service = start(tmp_path / "data")
    target = "127.0.0.1:%d" % service.port
    channel, client = stub(target)
    try:
        assert health_status(channel) == NOT_SERVING
        assert health_status(channel, SERVICE_NAME) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            client.Authorize(export_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        done = load_cli(tmp_path / "data",
                        *write_sources(tmp_path / "source"))
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while health_status(channel) != SERVING:
            assert time.monotonic() < deadline, "never became SERVING"
            time.sleep(0.1)

        assert health_status(channel, SERVICE_NAME) == SERVING
        response = client.Authorize(export_request(), timeout=5)
        assert response.decision == pb.DECISION_ALLOW
    finally:
        channel.close()
        service.stop(0)


def test_unreadable_data_is_unavailable(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    service = start(tmp_path / "data")
    channel, client = stub("127.0.0.1:%d" % service.port)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            client.Authorize(export_request(), timeout=5)

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert health_status(channel) == NOT_SERVING
    finally:
        channel.close()
        service.stop(0)


class Broken:
    """A facade whose every call fails unexpectedly."""

    matcher_name = "compiled"
    revision = 1

    def refresh(self):
        return self.revision

    def maintain(self):
        pass

    def authorize(self, query):
        raise RuntimeError("disk on fire at /secret/path")

    def complete(self, grant_id, outcome):
        raise KeyError("boom")

    def close(self):
        pass


def test_unexpected_errors_fail_closed(tmp_path, caplog):
    service = Service(str(tmp_path), open_authorizer=lambda *_: Broken())
    service.start()
    channel, client = stub("127.0.0.1:%d" % service.port)
    try:
        with caplog.at_level(logging.ERROR, logger="jitauth.server"):
            with pytest.raises(grpc.RpcError) as caught:
                client.Authorize(export_request(), timeout=5)
            with pytest.raises(grpc.RpcError) as caught_complete:
                client.Complete(pb.CompleteRequest(grant_id="ab" * 16),
                                timeout=5)

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "secret" not in caught.value.details()
        assert caught_complete.value.code() == grpc.StatusCode.UNAVAILABLE
        assert any(r.exc_info and "disk on fire" in str(r.exc_info[1])
                   for r in caplog.records)
    finally:
        channel.close()
        service.stop(0)


def test_reflection_lists_the_services(server):
    _, _, channel = server
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(reflection.ServerReflectionInfo(iter([request]),
                                                     timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}

    assert {"jitauth.v1.Authorizer", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names

    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="jitauth.v1.Authorizer")
    response = next(iter(reflection.ServerReflectionInfo(iter([request]),
                                                         timeout=5)))
    assert response.file_descriptor_response.file_descriptor_proto


class Slow:
    """Wraps a facade; Authorize takes ``delay`` seconds."""

    def __init__(self, inner, delay):
        self.inner = inner
        self.delay = delay
        self.matcher_name = inner.matcher_name
        self.started = threading.Event()

    @property
    def revision(self):
        return self.inner.revision

    def refresh(self):
        return self.inner.refresh()

    def maintain(self):
        self.inner.maintain()

    def authorize(self, query):
        self.started.set()
        time.sleep(self.delay)
        return self.inner.authorize(query)

    def close(self):
        self.inner.close()


def test_stop_reports_not_serving_then_drains(data_dir):
    slow = []

    def open_slow(path, matcher):
        slow.append(Slow(Authorizer(path, matcher=matcher), 1.0))
        return slow[0]

    service = Service(str(data_dir), open_authorizer=open_slow)
    service.start()
    channel, client = stub("127.0.0.1:%d" % service.port)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""),
                         timeout=10)
    in_flight = client.Authorize.future(export_request(), timeout=10)
    try:
        assert next(watch).status == SERVING
        assert slow[0].started.wait(5)

        stopper = threading.Thread(target=service.stop, args=(5.0,))
        stopper.start()

        assert next(watch).status == NOT_SERVING
        assert in_flight.result().decision == pb.DECISION_ALLOW
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        watch.cancel()
        channel.close()
