"""``envoy.service.accesslog.v3.AccessLogService``: grants completed by
the mesh.

Envoy streams an HTTP access log entry when a request ends.  When the
request was allowed with a grant, the Check answer left the grant id in
the request's dynamic metadata (``envoy.filters.http.ext_authz``,
``grant_id``), and Envoy's gRPC access logger sends that metadata along
with the entry.  The receiver completes the grant, so a seat is free again
as soon as the response has gone out, without the upstream calling
Complete itself:

- a response status of 500 or above: outcome failure;
- any other status: outcome success;
- no response at all (status 0: the client went away, the stream was
  reset): nothing is completed.  The upstream may still be doing the work,
  so the grant keeps its seat and its quota units until it expires (and an
  expired grant's units count as consumed): a client cannot get work done
  for free by hanging up early;
- unless the upstream answered with the mapping's keep header
  (``x-jitauth-keep-grant: 1``, logged through Envoy's
  ``additional_response_headers_to_log``): the action goes on after the
  response (a job it accepted), and the upstream completes the grant
  itself.

Envoy's access log is lossy: entries are dropped while the receiver is
unreachable or its stream is being re-established.  The grant's TTL stays
the backstop: a grant nobody completes ends when it expires.

Each stream holds one server thread for its whole life (Envoy keeps one
open per worker thread and log name).  At most :data:`MAX_STREAMS` are
served at once, on threads added to the server for them, so that log
streams never take the threads that answer Check; more are refused with
RESOURCE_EXHAUSTED.
"""

import logging
import threading

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from jitauth.envoy.check import EXT_AUTHZ_NAMESPACE
from jitauth.model import GrantNotFound, InvalidInput, Outcome, Unavailable

log = logging.getLogger(__name__)

SERVICE_NAME = als_pb2.DESCRIPTOR.services_by_name[
    "AccessLogService"].full_name

#: Access log streams served at once.
MAX_STREAMS = 32


def outcome_of(entry) -> Outcome | None:
    """How the request of an HTTP access log entry ended; None when it got
    no response (the grant is then left to its expiry)."""
    code = entry.response.response_code.value
    if code == 0:
        return None
    if code >= 500:
        return Outcome.FAILURE
    return Outcome.SUCCESS


def grant_of(entry) -> str:
    """The grant id the Check answer put in the entry's dynamic metadata,
    or ``""``."""
    namespaces = entry.common_properties.metadata.filter_metadata
    if EXT_AUTHZ_NAMESPACE not in namespaces:
        return ""
    value = namespaces[EXT_AUTHZ_NAMESPACE].fields.get("grant_id")
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    return value.string_value


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    """Completes the grants of requests Envoy reports as ended.

    ``authorizer`` is a callable returning the worker's Authorizer, or None
    while its data is not open (entries are then dropped: the grants end
    at their expiry).
    """

    def __init__(self, authorizer, *, keep_header: str = "",
                 max_streams: int | None = None):
        self._authorizer = authorizer
        self._keep_header = keep_header
        self._streams = threading.BoundedSemaphore(max_streams
                                                   or MAX_STREAMS)

    def StreamAccessLogs(self, request_iterator, context):
        if not self._streams.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "too many access log streams")
        warned = failed = False
        try:
            for message in request_iterator:
                for entry in message.http_logs.log_entry:
                    try:
                        self.settle(entry)
                    except Unavailable as exc:
                        if not warned:
                            log.warning("cannot complete grants from the "
                                        "access log (%s); they end at "
                                        "their expiry", exc)
                            warned = True
                    except Exception:
                        # A bug must not end the stream: Envoy would drop
                        # the entries of every other request meanwhile.
                        # Logged once per stream, not once per request.
                        if not failed:
                            log.exception("completing a grant from the "
                                          "access log failed")
                            failed = True
        finally:
            self._streams.release()
        return als_pb2.StreamAccessLogsResponse()

    def settle(self, entry):
        """Complete the grant of one HTTP log entry; return the
        ``CompleteResult``, or None when the entry names no grant we know.
        Raises ``Unavailable`` when the data cannot be read."""
        grant_id = grant_of(entry)
        if not grant_id:
            return None
        if self._keep_header and entry.response.response_headers.get(
                self._keep_header, "") not in ("", "0", "false"):
            return None
        outcome = outcome_of(entry)
        if outcome is None:
            return None
        authorizer = self._authorizer()
        if authorizer is None:
            raise Unavailable("data not open")

        try:
            result = authorizer.complete(grant_id, outcome)
        except (GrantNotFound, InvalidInput) as exc:
            log.debug("access log names grant %r: %s", grant_id[:64], exc)
            return None
        return result
