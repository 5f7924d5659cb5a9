"""Server spans through a real server on port 0, with an in-memory exporter."""

import grpc
import pytest
from live_server import export_request, stub, write_sources
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from jitauth import telemetry
from jitauth.loader import load
from jitauth.server import Service
from jitauth.v1 import authorizer_pb2 as pb

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = "00-%s-%s-01" % (TRACE_ID, PARENT_SPAN_ID)


@pytest.fixture
def data_dir(tmp_path):
    policy_path, licenses_path = write_sources(tmp_path / "source")
    load(str(tmp_path / "data"), policy_path, [licenses_path])
    return str(tmp_path / "data")


@pytest.fixture
def traced(data_dir):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = Service(data_dir, tracer_provider=provider)
    service.start()
    channel, client = stub("127.0.0.1:%d" % service.port)
    yield client, exporter
    channel.close()
    service.stop(0)


def test_authorize_span_continues_the_callers_trace(traced):
    client, exporter = traced

    response = client.Authorize(export_request(request_id="req-1"),
                                timeout=5,
                                metadata=[("traceparent", TRACEPARENT)])

    (span,) = exporter.get_finished_spans()
    assert span.name == "jitauth.v1.Authorizer/Authorize"
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.parent.is_remote
    assert span.status.status_code == StatusCode.UNSET
    attributes = dict(span.attributes)
    assert attributes[telemetry.DECISION] == "allow"
    assert attributes[telemetry.REASON] == "allowed_by_rule"
    assert attributes[telemetry.RULE_ID] == "export"
    assert attributes[telemetry.REVISION] == 1
    assert attributes[telemetry.ACCOUNT_ID] == "acme"
    assert attributes[telemetry.GRANT_ID] == response.grant.id
    assert attributes[telemetry.REQUEST_ID] == "req-1"
    assert attributes[telemetry.DECISION_ID] == response.decision_id
    assert attributes[telemetry.RPC_SYSTEM] == "grpc"
    assert attributes[telemetry.RPC_METHOD] == "Authorize"
    assert attributes[telemetry.RPC_GRPC_STATUS_CODE] == 0


def test_deny_and_complete_spans(traced):
    client, exporter = traced
    denied = client.Authorize(export_request("globex"), timeout=5)
    grant = client.Authorize(export_request(), timeout=5).grant

    client.Complete(pb.CompleteRequest(grant_id=grant.id), timeout=5)

    deny, allow, complete = exporter.get_finished_spans()
    assert deny.attributes[telemetry.DECISION] == "deny"
    assert deny.attributes[telemetry.REASON] == "not_entitled"
    assert deny.attributes[telemetry.GRANT_ID] == ""
    assert deny.attributes[telemetry.DECISION_ID] == denied.decision_id
    assert complete.name == "jitauth.v1.Authorizer/Complete"
    assert complete.attributes[telemetry.GRANT_ID] == grant.id
    assert complete.attributes[telemetry.GRANT_STATE] == "completed"
    assert complete.attributes[telemetry.ALREADY_ENDED] is False
    assert complete.attributes[telemetry.ACCOUNT_ID] == "acme"
    assert complete.attributes[telemetry.OUTCOME] == "success"
    # No traceparent: each call starts a trace of its own.
    assert deny.parent is None
    assert deny.context.trace_id != allow.context.trace_id


def test_rpc_errors_mark_the_span(traced):
    client, exporter = traced

    with pytest.raises(grpc.RpcError):
        client.Authorize(export_request(account_id=""), timeout=5,
                         metadata=[("traceparent", TRACEPARENT)])
    with pytest.raises(grpc.RpcError):
        client.Complete(pb.CompleteRequest(grant_id="ab" * 16), timeout=5)

    invalid, missing = exporter.get_finished_spans()
    assert invalid.status.status_code == StatusCode.ERROR
    assert invalid.attributes[telemetry.RPC_GRPC_STATUS_CODE] == \
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert invalid.attributes[telemetry.INVALID_FIELD] == "account_id"
    assert format(invalid.context.trace_id, "032x") == TRACE_ID
    assert missing.attributes[telemetry.RPC_GRPC_STATUS_CODE] == \
        grpc.StatusCode.NOT_FOUND.value[0]


def test_tracing_off_creates_no_span(data_dir, monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Even a global provider must see nothing when the server is untraced.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    service = Service(data_dir, tracer_provider=telemetry.provider_from_env())
    service.start()
    channel, client = stub("127.0.0.1:%d" % service.port)
    try:
        client.Authorize(export_request(), timeout=5,
                         metadata=[("traceparent", TRACEPARENT)])
    finally:
        channel.close()
        service.stop(0)

    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("environ, names", [
    ({}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, []),
])
def test_exporter_names_follow_the_otel_environment(environ, names):
    assert telemetry.exporter_names(environ) == names


def test_provider_from_env(monkeypatch):
    assert telemetry.provider_from_env({}) is None

    provider = telemetry.provider_from_env({
        "OTEL_TRACES_EXPORTER": "console,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    try:
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "jitauth"
    finally:
        provider.shutdown()

    with pytest.raises(ValueError, match="no exporter named"):
        telemetry.provider_from_env({"OTEL_TRACES_EXPORTER": "carrier"})
