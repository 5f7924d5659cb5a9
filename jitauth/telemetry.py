"""Traces: the tracer name, the span attribute keys, and the server hook.

Every Authorize and Complete call is one server span named after the RPC
(``jitauth.v1.Authorizer/Authorize``).  A caller's W3C ``traceparent`` in
the gRPC metadata makes the span a child of the caller's span.

Exporting is configured the standard OpenTelemetry way, through the
environment: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or several,
comma-separated; unset or ``none``: tracing off), ``OTEL_EXPORTER_OTLP_*``
for the OTLP exporter, ``OTEL_TRACES_SAMPLER`` and ``OTEL_SERVICE_NAME``,
read by the SDK itself, and ``OTEL_SDK_DISABLED=true`` to turn it all off.

When tracing is off no interceptor is installed and no span is created:
the request path pays one attribute test per call.
"""

import logging
import os
from importlib.metadata import entry_points

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from jitauth.model import AuthorizeResult, CompleteResult

log = logging.getLogger(__name__)

TRACER_NAME = "jitauth"
SERVICE_NAME = "jitauth"

# Span attribute keys.  Values: decision "allow"/"deny"; reason, grant state
# and outcome as the lower-case enum names ("not_entitled", "completed").
DECISION = "jitauth.decision"
REASON = "jitauth.reason"
RULE_ID = "jitauth.rule_id"
REVISION = "jitauth.revision"
ACCOUNT_ID = "jitauth.account_id"
GRANT_ID = "jitauth.grant_id"
GRANT_STATE = "jitauth.grant_state"
ALREADY_ENDED = "jitauth.already_ended"
OUTCOME = "jitauth.outcome"
REQUEST_ID = "jitauth.request_id"
DECISION_ID = "jitauth.decision_id"
REPLAYED = "jitauth.replayed"
DRY_RUN = "jitauth.dry_run"
ACTION = "jitauth.action"
INVALID_FIELD = "jitauth.invalid_field"
# From OpenTelemetry's RPC semantic conventions.
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"

_EXPORTER_GROUP = "opentelemetry_traces_exporter"


def exporter_names(environ=os.environ) -> list[str]:
    """The exporters the environment asks for; empty when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "")
    names = [n.strip() for n in names.split(",") if n.strip()]
    return [n for n in names if n != "none"]


def provider_from_env(environ=os.environ):
    """A tracer provider exporting as the environment says, or None.

    Call it in the worker process, after it started: the OTLP exporter
    opens gRPC channels and export threads of its own.
    """
    names = exporter_names(environ)
    if not names:
        return None

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": SERVICE_NAME})
    if "OTEL_SERVICE_NAME" in environ:
        resource = Resource.create()
    provider = TracerProvider(resource=resource)
    for name in names:
        if name == "otlp":
            name = _otlp_entry_point(environ)
        found = entry_points(group=_EXPORTER_GROUP, name=name)
        if not found:
            raise ValueError("OTEL_TRACES_EXPORTER: no exporter named %r is "
                             "installed" % name)
        exporter = next(iter(found)).load()()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: exporters %s", ", ".join(names))
    return provider


def _otlp_entry_point(environ) -> str:
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or \
        environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    return {"grpc": "otlp_proto_grpc",
            "http/protobuf": "otlp_proto_http"}.get(protocol, protocol)


class WrappingInterceptor(grpc.ServerInterceptor):
    """Wraps each unary-unary method's handler once and reuses the wrapper,
    so a call pays one dict lookup, not a handler rebuild.  Subclasses
    give ``_wrap(method, handler)``."""

    def __init__(self):
        self._handlers = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = continuation(handler_call_details)
            if handler is None or handler.unary_unary is None:
                return handler
            handler = self._wrap(method, handler)
            self._handlers[method] = handler
        return handler

    def _wrap(self, method: str, handler):
        raise NotImplementedError


class ServerTracing(WrappingInterceptor):
    """Wraps each call in a server span; far leaner than the stock
    OpenTelemetry gRPC instrumentation (no per-call handler rebuild, no
    message events, no peer parsing)."""

    def __init__(self, tracer_provider):
        super().__init__()
        self._tracer = tracer_provider.get_tracer(TRACER_NAME)

    def _wrap(self, method: str, handler):
        tracer = self._tracer
        name = method.lstrip("/")
        service, _, rpc = name.rpartition("/")
        attributes = {RPC_SYSTEM: "grpc", RPC_SERVICE: service,
                      RPC_METHOD: rpc}
        behavior = handler.unary_unary

        def traced(request, context):
            carrier = dict(context.invocation_metadata())
            parent = propagate.extract(carrier)
            with tracer.start_as_current_span(
                    name, context=parent, kind=SpanKind.SERVER,
                    attributes=attributes, record_exception=False,
                    set_status_on_exception=False) as span:
                try:
                    response = behavior(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
                    span.set_status(Status(StatusCode.ERROR, code.name))
                    raise
                span.set_attribute(RPC_GRPC_STATUS_CODE, 0)
                return response

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def record_authorize(result: AuthorizeResult, account_id: str,
                     request_id: str) -> None:
    """Put an Authorize decision on the current span."""
    span = trace.get_current_span()
    span.set_attributes({
        DECISION: "allow" if result.allowed else "deny",
        REASON: result.reason.name.lower(),
        RULE_ID: result.rule_id,
        REVISION: result.revision,
        ACCOUNT_ID: account_id,
        GRANT_ID: result.grant_id,
        REQUEST_ID: request_id,
        DECISION_ID: result.decision_id,
        REPLAYED: result.replayed,
        DRY_RUN: result.dry_run,
    })


def record_complete(result: CompleteResult) -> None:
    """Put a Complete call's final grant state on the current span."""
    span = trace.get_current_span()
    span.set_attributes({
        GRANT_ID: result.grant_id,
        GRANT_STATE: result.state.name.lower(),
        ALREADY_ENDED: result.already,
        OUTCOME: result.outcome.name.lower() if result.outcome else "",
        ACCOUNT_ID: result.account_id,
        ACTION: result.action,
    })


def record_invalid(field: str) -> None:
    """Name the offending field of a refused request on the current span."""
    trace.get_current_span().set_attribute(INVALID_FIELD, field)
