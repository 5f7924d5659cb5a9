"""jitauth as Envoy's external authorizer and access log receiver.

- :mod:`jitauth.envoy.mapping`: the configured mapping from an HTTP
  request to an Authorize question (no gRPC, no Envoy protos);
- :mod:`jitauth.envoy.check`: ``envoy.service.auth.v3.Authorization``;
- :mod:`jitauth.envoy.accesslog`:
  ``envoy.service.accesslog.v3.AccessLogService``, completing grants when
  Envoy logs the end of their request.

The Envoy protos come from the ``xds-protos`` package, imported only when
a server is started with an Envoy mapping (``jitauth serve
--envoy-config``).
"""

from jitauth.envoy.mapping import (
    HttpRequest,
    Mapping,
    MappingError,
    Unmapped,
    load_mapping,
    parse_mapping,
)

__all__ = ["HttpRequest", "Mapping", "MappingError", "Unmapped",
           "add_services", "extra_threads", "load_mapping", "parse_mapping"]


def extra_threads() -> int:
    """Server threads to add for the access log streams."""
    from jitauth.envoy.accesslog import MAX_STREAMS

    return MAX_STREAMS


def add_services(server, mapping: Mapping, authorizer, *,
                 traced: bool = False) -> tuple:
    """Register Check and StreamAccessLogs on a ``grpc.Server``; return
    the full names of the services added.

    ``authorizer`` is a callable returning the current Authorizer or None.
    """
    from envoy.service.accesslog.v3 import als_pb2_grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    from jitauth.envoy import accesslog, check

    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        check.CheckServicer(mapping, authorizer, traced=traced), server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(
        accesslog.AccessLogReceiver(authorizer,
                                    keep_header=mapping.keep_header),
        server)
    return check.SERVICE_NAME, accesslog.SERVICE_NAME
