"""ext_authz Check and the access log receiver over gRPC, without Envoy:
a real in-process server on port 0 and clients built from xds-protos."""

import json
import logging

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2
from live_server import write_sources

from jitauth.authorizer import Authorizer
from jitauth.envoy import parse_mapping
from jitauth.loader import load
from jitauth.server import Service
from jitauth.v1 import authorizer_pb2 as pb
from jitauth.v1 import authorizer_pb2_grpc

MAPPING = {
    "identity": {
        "account": {"header": "x-account"},
        "subject": {"header": "x-user"},
        "roles": {"header": "x-roles"},
    },
    "context": {"headers": {"x-env": "env"}, "source_address": "ip"},
    "routes": [
        {"method": "POST", "path": "/reports/{id}/export",
         "action": "reports.export",
         "resource": {"type": "report", "id": "{id}"}},
        {"method": "DELETE", "path": "/reports/{id}",
         "action": "reports.delete",
         "resource": {"type": "report", "id": "{id}"}},
    ],
}
ALICE = {"x-account": "acme", "x-user": "alice", "x-roles": "analyst",
         "x-env": "prod"}


def check_request(method="POST", path="/reports/q3/export", headers=None,
                  extensions=None, jwt=None) -> ext.CheckRequest:
    request = ext.CheckRequest()
    http = request.attributes.request.http
    http.method = method
    http.path = path
    http.headers.update(ALICE if headers is None else headers)
    request.attributes.source.address.socket_address.address = "127.0.0.9"
    request.attributes.context_extensions.update(extensions or {})
    if jwt is not None:
        namespace = request.attributes.metadata_context.filter_metadata[
            "envoy.filters.http.jwt_authn"]
        namespace.update({"jwt_payload": jwt})
    return request


class Broken:
    revision = 1

    def refresh(self):
        return self.revision

    def maintain(self):
        pass

    def authorize(self, query):
        raise RuntimeError("corrupt record")

    def complete(self, grant_id, outcome, units=None):
        raise RuntimeError("corrupt record")

    def close(self):
        pass


@pytest.fixture
def data_dir(tmp_path):
    policy_path, licenses_path = write_sources(tmp_path / "source")
    load(str(tmp_path / "data"), policy_path, [licenses_path])
    return tmp_path / "data"


def serve(data_dir, mapping=MAPPING, open_authorizer=None):
    def open_real(path, matcher):
        return Authorizer(path, matcher=matcher)

    service = Service(str(data_dir), envoy=parse_mapping(mapping),
                      open_authorizer=open_authorizer or open_real)
    service.start()
    return service


@pytest.fixture
def server(data_dir):
    service = serve(data_dir)
    channel = grpc.insecure_channel("127.0.0.1:%d" % service.port)
    yield (external_auth_pb2_grpc.AuthorizationStub(channel),
           authorizer_pb2_grpc.AuthorizerStub(channel),
           als_pb2_grpc.AccessLogServiceStub(channel))
    channel.close()
    service.stop(0)


def body(response: ext.CheckResponse) -> dict:
    return json.loads(response.denied_response.body)


def upstream_headers(response: ext.CheckResponse) -> dict:
    return {h.header.key: h.header.value
            for h in response.ok_response.headers}


def test_allow_adds_grant_headers_and_metadata(server):
    check, authorizer, _ = server

    response = check.Check(check_request(), timeout=5)

    assert response.status.code == code_pb2.OK
    headers = upstream_headers(response)
    grant_id = headers["x-jitauth-grant-id"]
    assert len(grant_id) == 32
    assert headers["x-jitauth-grant-expires-at"].endswith("Z")
    assert len(headers["x-jitauth-decision-id"]) == 24
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert all(h.append_action == overwrite
               for h in response.ok_response.headers)
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    assert metadata["grant_id"] == grant_id
    assert metadata["decision"] == "allow"
    assert metadata["reason"] == "allowed_by_rule"

    done = authorizer.Complete(pb.CompleteRequest(grant_id=grant_id),
                               timeout=5)
    assert done.action == "reports.export"
    assert not done.already_ended


@pytest.mark.parametrize("request_args, status, reason", [
    (dict(headers=dict(ALICE, **{"x-account": "globex"})), 403,
     "not_entitled"),
    (dict(headers=dict(ALICE, **{"x-account": "initech"})), 403,
     "license_inactive"),
    (dict(headers=dict(ALICE, **{"x-account": "nobody"})), 403,
     "no_license"),
    (dict(method="DELETE", path="/reports/q3"), 403, "denied_by_rule"),
    (dict(headers=dict(ALICE, **{"x-env": "dev"})), 403,
     "no_matching_rule"),
    (dict(path="/admin"), 403, "no_route"),
    (dict(method="GET"), 403, "no_route"),
    (dict(headers={"x-user": "alice"}), 401, "missing_identity"),
    (dict(headers=dict(ALICE, **{"x-user": "u" * 300})), 400,
     "invalid_request"),
    (dict(headers=dict(ALICE, **{"x-env": "v" * 5000})), 400,
     "invalid_request"),
    (dict(headers=dict(ALICE, **{"x-roles": ",".join(["r"] * 100)})), 400,
     "invalid_request"),
])
def test_denies_and_refusals(server, request_args, status, reason):
    check, _, _ = server

    response = check.Check(check_request(**request_args), timeout=5)

    assert response.status.code != code_pb2.OK
    assert response.denied_response.status.code == status
    assert body(response)["reason"] == reason
    assert body(response)["message"]
    assert not response.HasField("ok_response")
    content_type = {h.header.key: h.header.value
                    for h in response.denied_response.headers}
    assert content_type["content-type"] == "application/json"


def test_policy_denies_carry_the_decision_id(server):
    check, _, _ = server

    response = check.Check(check_request(
        headers=dict(ALICE, **{"x-account": "globex"})), timeout=5)

    decision_id = body(response)["decision_id"]
    assert len(decision_id) == 24
    metadata = json_format.MessageToDict(response.dynamic_metadata)
    assert metadata == {"decision": "deny", "reason": "not_entitled",
                        "decision_id": decision_id}


def test_a_full_limit_is_429_with_retry_after(server):
    check, _, _ = server
    for _ in range(2):      # the test policy: 2 export slots
        assert check.Check(check_request(), timeout=5).status.code == 0

    response = check.Check(check_request(), timeout=5)

    assert response.denied_response.status.code == 429
    assert body(response)["reason"] == "concurrency_limit_reached"
    headers = {h.header.key: h.header.value
               for h in response.denied_response.headers}
    assert 1 <= int(headers["retry-after"]) <= 5


def test_context_extensions_name_the_action(server):
    check, _, _ = server

    response = check.Check(check_request(
        method="GET", path="/anything",
        extensions={"action": "reports.delete", "resource_type": "report"}),
        timeout=5)

    assert body(response)["reason"] == "denied_by_rule"


@pytest.mark.parametrize("jwt", [
    "not an object", ["a", "b"], {"org": ["acme"], "sub": "alice"},
])
def test_malformed_jwt_metadata_is_401(data_dir, jwt):
    mapping = dict(MAPPING, identity={"account": {"claim": "org"},
                                      "subject": {"claim": "sub"}})
    service = serve(data_dir, mapping)
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % service.port) as ch:
            check = external_auth_pb2_grpc.AuthorizationStub(ch)
            response = check.Check(check_request(jwt=jwt), timeout=5)
    finally:
        service.stop(0)

    assert response.denied_response.status.code == 401
    assert body(response)["reason"] == "invalid_identity"


def test_data_not_open_fails_unavailable(tmp_path):
    service = serve(tmp_path / "missing")
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % service.port) as ch:
            check = external_auth_pb2_grpc.AuthorizationStub(ch)
            with pytest.raises(grpc.RpcError) as error:
                check.Check(check_request(), timeout=5)
    finally:
        service.stop(0)

    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_internal_errors_fail_the_call_never_allow(tmp_path, caplog):
    service = serve(tmp_path / "data", open_authorizer=lambda p, m: Broken())
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % service.port) as ch:
            check = external_auth_pb2_grpc.AuthorizationStub(ch)
            with caplog.at_level(logging.ERROR, "jitauth.envoy.check"):
                with pytest.raises(grpc.RpcError) as error:
                    check.Check(check_request(), timeout=5)
    finally:
        service.stop(0)

    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "corrupt record" not in error.value.details()
    assert "corrupt record" in caplog.text


def log_entry(grant_id: str | None, status: int, keep: str | None = None):
    entry = accesslog_pb2.HTTPAccessLogEntry()
    if keep is not None:
        entry.response.response_headers["x-jitauth-keep-grant"] = keep
    if grant_id is not None:
        metadata = struct_pb2.Struct()
        metadata.update({"grant_id": grant_id})
        entry.common_properties.metadata.filter_metadata[
            "envoy.filters.http.ext_authz"].CopyFrom(metadata)
    if status:
        entry.response.response_code.value = status
    return entry


def stream(*entries):
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = "test"
    message.http_logs.log_entry.extend(entries)
    yield message


def allow_grant(check) -> str:
    response = check.Check(check_request(), timeout=5)
    return upstream_headers(response)["x-jitauth-grant-id"]


@pytest.mark.parametrize("status, outcome", [
    (200, pb.OUTCOME_SUCCESS), (404, pb.OUTCOME_SUCCESS),
    (503, pb.OUTCOME_FAILURE),
])
def test_access_log_completes_the_grant(server, status, outcome):
    check, authorizer, logs = server
    grant_id = allow_grant(check)

    logs.StreamAccessLogs(stream(log_entry(grant_id, status)), timeout=5)

    again = authorizer.Complete(pb.CompleteRequest(grant_id=grant_id),
                                timeout=5)
    assert again.already_ended
    assert again.state == pb.GRANT_STATE_COMPLETED
    assert again.outcome == outcome


def test_no_response_leaves_the_grant_to_its_expiry(server):
    check, authorizer, logs = server
    grant_id = allow_grant(check)

    logs.StreamAccessLogs(stream(log_entry(grant_id, 0)), timeout=5)

    later = authorizer.Complete(pb.CompleteRequest(grant_id=grant_id),
                                timeout=5)
    assert not later.already_ended  # still live: the client's own call ends it
    assert later.state == pb.GRANT_STATE_COMPLETED


def test_access_log_skips_what_it_cannot_use(server):
    check, authorizer, logs = server
    grant_id = allow_grant(check)

    logs.StreamAccessLogs(stream(
        log_entry(None, 200),                 # a request without a grant
        log_entry("0" * 32, 200),             # a grant never issued
        log_entry("not hex", 200),            # garbage
        log_entry("", 200),
        log_entry(grant_id, 200),             # still settled after those
        log_entry(grant_id, 500),             # a duplicate entry
    ), timeout=5)

    again = authorizer.Complete(pb.CompleteRequest(grant_id=grant_id),
                                timeout=5)
    assert again.already_ended
    assert again.outcome == pb.OUTCOME_SUCCESS


@pytest.mark.parametrize("keep, ended", [
    ("1", False), ("yes", False), ("0", True), ("false", True), ("", True),
])
def test_the_keep_header_leaves_the_grant_live(server, keep, ended):
    check, authorizer, logs = server
    grant_id = allow_grant(check)

    logs.StreamAccessLogs(stream(log_entry(grant_id, 202, keep)), timeout=5)

    again = authorizer.Complete(pb.CompleteRequest(grant_id=grant_id),
                                timeout=5)
    assert again.already_ended == ended


def test_access_log_frees_the_seat(server):
    check, _, logs = server
    grants = [allow_grant(check) for _ in range(2)]
    assert check.Check(check_request(), timeout=5).denied_response.status \
        .code == 429

    logs.StreamAccessLogs(stream(log_entry(grants[0], 200)), timeout=5)

    assert check.Check(check_request(), timeout=5).status.code == 0


def test_streams_over_the_cap_are_refused(data_dir, monkeypatch):
    from jitauth.envoy import accesslog

    monkeypatch.setattr(accesslog, "MAX_STREAMS", 1)
    service = serve(data_dir)
    first = second = None
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % service.port) as ch:
            logs = als_pb2_grpc.AccessLogServiceStub(ch)
            hold = _Held()
            first = logs.StreamAccessLogs.future(iter(hold), timeout=10)
            hold.started.wait(5)
            second = logs.StreamAccessLogs.future(stream(), timeout=5)
            with pytest.raises(grpc.RpcError) as error:
                second.result()
            hold.done.set()
            first.result()
    finally:
        service.stop(0)

    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class _Held:
    """A request stream that stays open until ``done`` is set."""

    def __init__(self):
        import threading

        self.started = threading.Event()
        self.done = threading.Event()

    def __iter__(self):
        message = als_pb2.StreamAccessLogsMessage()
        message.identifier.log_name = "held"
        yield message
        self.started.set()
        self.done.wait(10)


def test_serve_with_an_envoy_config_and_two_workers(tmp_path, data_dir):
    from live_server import ServeProcess, wait_serving

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(json.dumps(MAPPING))
    server = ServeProcess("--data", str(data_dir), "--listen",
                          "127.0.0.1:0", "--workers", "2", "--envoy-config",
                          str(mapping))
    try:
        wait_serving(server.address)
        answers = []
        for _ in range(4):      # own connections: both workers answer
            with grpc.insecure_channel(
                    server.address,
                    options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                check = external_auth_pb2_grpc.AuthorizationStub(ch)
                answers.append(check.Check(check_request(
                    headers=dict(ALICE, **{"x-account": "globex"})),
                    timeout=10))
    finally:
        server.stop()

    assert {body(a)["reason"] for a in answers} == {"not_entitled"}


@pytest.mark.parametrize("content, message", [
    ("identity: [", "not valid YAML"),
    ("routes: []", "identity: is required"),
])
def test_serve_refuses_a_bad_envoy_config(tmp_path, content, message):
    import subprocess

    from live_server import JITAUTH

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(content)

    out = subprocess.run(
        JITAUTH + ["serve", "--data", str(tmp_path), "--listen",
                   "127.0.0.1:0", "--envoy-config", str(mapping)],
        capture_output=True, text=True, timeout=60)

    assert out.returncode == 2
    assert message in out.stderr
    assert str(mapping) in out.stderr


def test_access_log_survives_internal_errors(tmp_path, caplog):
    service = serve(tmp_path / "data", open_authorizer=lambda p, m: Broken())
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % service.port) as ch:
            logs = als_pb2_grpc.AccessLogServiceStub(ch)
            with caplog.at_level(logging.ERROR, "jitauth.envoy.accesslog"):
                logs.StreamAccessLogs(stream(
                    *[log_entry("a" * 32, 200) for _ in range(5)]),
                    timeout=5)
    finally:
        service.stop(0)

    errors = [r for r in caplog.records if r.levelno == logging.ERROR
              and r.name == "jitauth.envoy.accesslog"]
    assert len(errors) == 1
    assert "corrupt record" in caplog.text
