"""``envoy.service.auth.v3.Authorization/Check``: Envoy's ext_authz.

Envoy asks before it forwards each HTTP request.  The mapping
(:mod:`jitauth.envoy.mapping`) turns the request into an Authorize
question; the answer goes back as one of:

- **allow**: ``OkHttpResponse`` adding the grant id, its expiry and the
  decision id as request headers for the upstream (replacing any the
  client sent), and the same facts as dynamic metadata under Envoy's
  ``envoy.filters.http.ext_authz`` namespace, where the access log
  receiver (:mod:`jitauth.envoy.accesslog`) finds the grant to complete;
- **deny**: ``DeniedHttpResponse`` with the HTTP status of
  :data:`HTTP_STATUS` and a small JSON body (``reason``, ``message``,
  ``decision_id``); ``retry-after`` for seats and quotas;
- **failure**: the Check call itself fails (:data:`GRPC_CODES`), so that
  Envoy answers with its ``status_on_error``.  A failure is never an allow.
"""

import json
import logging
from datetime import datetime, timezone

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

from jitauth import metrics, telemetry, wire
from jitauth.envoy.mapping import JWT_NAMESPACE, HttpRequest, Unmapped
from jitauth.model import InvalidInput, Reason, Unavailable

log = logging.getLogger(__name__)

SERVICE_NAME = ext.DESCRIPTOR.services_by_name["Authorization"].full_name

#: The dynamic metadata namespace Envoy files a Check answer's metadata
#: under.
EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"

#: HTTP status of each refusal, by reason: the domain's deny reasons
#: (``Reason`` names in lower case) and the mapping's own.  Any reason not
#: listed is 403.
HTTP_STATUS = {
    "concurrency_limit_reached": 429,
    "quota_exhausted": 429,
    "missing_identity": 401,
    "invalid_identity": 401,
    "invalid_request": 400,
}
DEFAULT_DENY_STATUS = 403

#: Errors that fail the Check call itself; anything else is INTERNAL.
#: Envoy then answers the HTTP request with its ``status_on_error``.
GRPC_CODES = {
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = status_pb2.Status(code=code_pb2.OK)


def http_request(check: ext.CheckRequest, jwt_key: str) -> HttpRequest:
    """The parts of a ``CheckRequest`` the mapping reads."""
    attributes = check.attributes
    http = attributes.request.http

    headers = dict(http.headers)
    if not headers and http.HasField("header_map"):
        # Envoy sends header_map instead when encode_raw_headers is on.
        for entry in http.header_map.headers:
            value = entry.value or entry.raw_value.decode("utf-8",
                                                          "replace")
            name = entry.key.lower()
            headers[name] = (headers[name] + "," + value if name in headers
                             else value)

    jwt_payload = None
    namespaces = attributes.metadata_context.filter_metadata
    if JWT_NAMESPACE in namespaces:
        fields = namespaces[JWT_NAMESPACE].fields
        if jwt_key in fields:
            jwt_payload = json_format.MessageToDict(fields[jwt_key])

    return HttpRequest(
        method=http.method,
        path=http.path,
        headers=headers,
        source_address=attributes.source.address.socket_address.address,
        principal=attributes.source.principal,
        context_extensions=dict(attributes.context_extensions),
        jwt_payload=jwt_payload)


def _rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=_OVERWRITE)


def _metadata(values: dict) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.update(values)
    return metadata


def refusal(reason: str, message: str, decision_id: str = "",
            retry_after_ms: int = 0) -> ext.CheckResponse:
    """A ``DeniedHttpResponse`` for ``reason`` (see :data:`HTTP_STATUS`)."""
    status = HTTP_STATUS.get(reason, DEFAULT_DENY_STATUS)
    body = {"reason": reason, "message": message}
    if decision_id:
        body["decision_id"] = decision_id

    headers = [_header("content-type", "application/json")]
    if status == 429 and retry_after_ms > 0:
        seconds = -(-retry_after_ms // 1000)
        headers.append(_header("retry-after", str(seconds)))

    code = (code_pb2.UNAUTHENTICATED if status == 401
            else code_pb2.PERMISSION_DENIED)
    return ext.CheckResponse(
        status=status_pb2.Status(code=code, message=reason),
        denied_response=ext.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=headers,
            body=json.dumps(body, separators=(",", ":")) + "\n"),
        dynamic_metadata=_metadata({"decision": "deny", "reason": reason,
                                    "decision_id": decision_id}))


class CheckServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Envoy's ext_authz Check over the Authorizer facade.

    ``authorizer`` is a callable returning the worker's Authorizer, or None
    while its data is not open (every Check then fails UNAVAILABLE).
    """

    def __init__(self, mapping, authorizer, *, traced: bool = False):
        self.mapping = mapping
        self._authorizer = authorizer
        self._traced = traced
        self._headers = mapping.upstream_headers
        # Check answers are counted with Authorize's decisions; the metrics
        # interceptor cannot read a decision out of a CheckResponse.
        self._metrics = metrics.worker_metrics()

    def Check(self, request: ext.CheckRequest, context) -> ext.CheckResponse:
        try:
            http = http_request(request, self.mapping.jwt_payload_key)
            query = self.mapping.question(http)
            facade = self._authorizer()
            if facade is None:
                raise Unavailable("data not open")
            result = facade.authorize(query)
        except Unmapped as exc:
            log.debug("Check: refused: %s", exc.message)
            return refusal(exc.reason, exc.message)
        except InvalidInput as exc:
            log.debug("Check: invalid request: %s", exc)
            return refusal("invalid_request", str(exc))
        except Exception as exc:
            self._fail(context, exc)

        if self._traced:
            telemetry.record_authorize(result, query.account_id, "")
        if self._metrics is not None:
            self._metrics.decided("allow" if result.allowed else "deny",
                                  result.reason.name.lower())
        if not result.allowed:
            return refusal(result.reason.name.lower(), result.message,
                           result.decision_id, result.retry_after_ms)
        return self._allow(result)

    def _allow(self, result) -> ext.CheckResponse:
        names = self._headers
        expires = _rfc3339(result.expires_at_ms) if result.grant_id else ""
        facts = {"decision": "allow",
                 "reason": Reason(result.reason).name.lower(),
                 "decision_id": result.decision_id,
                 "grant_id": result.grant_id,
                 "grant_expires_at": expires}
        headers = [_header(names["decision_id"], result.decision_id)]
        remove = []
        if result.grant_id:
            headers.append(_header(names["grant_id"], result.grant_id))
            headers.append(_header(names["grant_expires_at"], expires))
        else:
            remove = [names["grant_id"], names["grant_expires_at"]]
        return ext.CheckResponse(
            status=_OK,
            ok_response=ext.OkHttpResponse(headers=headers,
                                           headers_to_remove=remove),
            dynamic_metadata=_metadata(facts))

    def _fail(self, context, exc: Exception):
        code = wire.status_for(exc, GRPC_CODES)
        if code is grpc.StatusCode.UNAVAILABLE:
            log.debug("Check: unavailable: %s", exc)
            context.abort(code, "data unavailable; no decision was made")
        log.error("Check failed; answering INTERNAL", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL,
                      "internal error; no decision was made")
