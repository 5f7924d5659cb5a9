"""The gRPC server: the Authorizer service over the domain facade.

Layout of a running server: one parent process that owns the listening
port and supervises N worker processes; each worker runs its own gRPC
server on the shared port (``SO_REUSEPORT``: the kernel spreads incoming
connections over the workers) and opens its own
:class:`jitauth.authorizer.Authorizer` on the shared LMDB environment.

Workers are started with the multiprocessing "spawn" method, so neither
gRPC nor LMDB is ever initialised in a process that forks afterwards.

Requests arrive as raw bytes (identity request deserializer) and are
checked and converted by :mod:`jitauth.wire`.  Errors leave through
``context.abort`` with the status code given by :data:`STATUS_CODES`.
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jitauth import admin, audit, metrics, telemetry, wire
from jitauth.grants import GrantEnded, LicenseUnusable
from jitauth.limits import MAX_BATCH_BYTES
from jitauth.model import GrantNotFound, InvalidInput, Unavailable
from jitauth.v1 import authorizer_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name

#: Domain errors and the gRPC status codes they leave with.  Anything else
#: raised while deciding (store errors, corrupt records, bugs) is
#: UNAVAILABLE: the server fails closed and never answers allow.
STATUS_CODES = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    GrantNotFound: grpc.StatusCode.NOT_FOUND,
    GrantEnded: grpc.StatusCode.FAILED_PRECONDITION,
    LicenseUnusable: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Threads per worker serving calls.  Decisions hold the GIL for a few
# microseconds; more threads only add contention, fewer let one call
# waiting on the LMDB writer lock hold the others up.
THREADS = 8
# Largest message gRPC itself accepts; wire.LIMITS refuses requests well
# below it with INVALID_ARGUMENT naming the limit.
MAX_MESSAGE_BYTES = 2 * MAX_BATCH_BYTES
# How often a worker checks for its data (opening it, a revision loaded).
DATA_POLL_SECONDS = 1.0
# Restarts of crashed workers allowed within RESTART_WINDOW seconds.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# How long the parent waits for its first workers before announcing the
# address anyway.
READY_TIMEOUT = 60.0


class AuthorizerServicer:
    """The ``jitauth.v1.Authorizer`` methods over an Authorizer facade.

    ``authorizer`` may be None while the data cannot be opened: every call
    is then UNAVAILABLE.  ``traced`` makes the methods put their decision on
    the current span (set by :class:`jitauth.telemetry.ServerTracing`).
    """

    def __init__(self, authorizer=None, *, traced: bool = False):
        self.authorizer = authorizer
        self._traced = traced

    def Authorize(self, request: bytes, context) -> pb.AuthorizeResponse:
        try:
            query = wire.parse_authorize(request)
            result = self._facade().authorize(query)
        except Exception as exc:
            self._fail(context, exc, "Authorize")

        if self._traced:
            telemetry.record_authorize(result, query.account_id,
                                       query.request_id)
        return wire.authorize_response(result)

    def Complete(self, request: bytes, context) -> pb.CompleteResponse:
        try:
            grant_id, outcome, units = wire.parse_complete(request)
            result = self._facade().complete(grant_id, outcome, units)
        except Exception as exc:
            self._fail(context, exc, "Complete")

        if self._traced:
            telemetry.record_complete(result)
        return wire.complete_response(result)

    def AuthorizeBatch(self, request: bytes,
                       context) -> pb.AuthorizeBatchResponse:
        try:
            items = wire.parse_batch(request)
            results = self._facade().authorize_batch(items)
        except Exception as exc:
            self._fail(context, exc, "AuthorizeBatch")
        return wire.batch_response(results)

    def Renew(self, request: bytes, context) -> pb.RenewResponse:
        try:
            grant_id, account_id, extend_by_ms = wire.parse_renew(request)
            grant = self._facade().renew(grant_id, account_id, extend_by_ms)
        except Exception as exc:
            self._fail(context, exc, "Renew")
        return wire.renew_response(grant)

    def _facade(self):
        authorizer = self.authorizer
        if authorizer is None:
            raise Unavailable("data not open")
        return authorizer

    def _fail(self, context, exc: Exception, method: str):
        code = wire.status_for(exc, STATUS_CODES)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            if self._traced:
                telemetry.record_invalid(exc.field)
            log.debug("%s: invalid request: %s", method, exc)
            context.abort(code, str(exc))
        if code is grpc.StatusCode.NOT_FOUND:
            context.abort(code, "no such grant")
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            context.abort(code, str(exc))
        if code is grpc.StatusCode.UNAVAILABLE:
            log.debug("%s: unavailable: %s", method, exc)
            context.abort(code, "data unavailable; no decision was made")
        log.error("%s failed; answering UNAVAILABLE", method, exc_info=exc)
        context.abort(grpc.StatusCode.UNAVAILABLE,
                      "internal error; no decision was made")


def _method_handlers(servicer: AuthorizerServicer) -> dict:
    # request_deserializer=None hands the handler the raw request bytes.
    return {
        "Authorize": grpc.unary_unary_rpc_method_handler(
            servicer.Authorize,
            response_serializer=pb.AuthorizeResponse.SerializeToString,
        ),
        "Complete": grpc.unary_unary_rpc_method_handler(
            servicer.Complete,
            response_serializer=pb.CompleteResponse.SerializeToString,
        ),
        "Renew": grpc.unary_unary_rpc_method_handler(
            servicer.Renew,
            response_serializer=pb.RenewResponse.SerializeToString,
        ),
        "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(
            servicer.AuthorizeBatch,
            response_serializer=pb.AuthorizeBatchResponse.SerializeToString,
        ),
    }


class Service:
    """One gRPC server over one Authorizer: what a worker process runs.

    ``start()`` binds ``listen`` and serves at once; the data is opened in
    the background if it cannot be opened right away, and health reports
    SERVING only while the data is open and holds a loaded revision.
    """

    def __init__(self, data_dir: str, *, listen: str = "127.0.0.1:0",
                 matcher: str = "compiled", tracer_provider=None,
                 open_authorizer=None, envoy=None):
        self.data_dir = data_dir
        self.listen = listen
        self.matcher = matcher
        self.port = None
        self._tracer_provider = tracer_provider
        self._open_authorizer = open_authorizer or _open_authorizer
        self._stopping = threading.Event()
        self._watcher = None
        self._serving = None
        self._warned = False
        # An Envoy mapping (jitauth.envoy.Mapping) adds ext_authz and the
        # access log receiver, and threads for the log streams.
        self.envoy = envoy
        threads = THREADS
        if envoy is not None:
            from jitauth import envoy as envoy_services

            threads += envoy_services.extra_threads()

        self.servicer = AuthorizerServicer(
            traced=tracer_provider is not None)
        self.health = health.HealthServicer()
        interceptors = []
        if tracer_provider is not None:
            interceptors.append(telemetry.ServerTracing(tracer_provider))
        if audit.config_from_env() is not None:
            interceptors.append(audit.CallerTrace())
        if metrics.enabled():
            interceptors.append(metrics.ServerMetrics(
                metrics.worker_metrics()))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(threads,
                                       thread_name_prefix="jitauth-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )

    def start(self) -> int:
        """Serve; return the bound port."""
        handlers = _method_handlers(self.servicer)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        self.server.add_registered_method_handlers(SERVICE_NAME, handlers)
        admin_handlers = admin.method_handlers(
            admin.AdminServicer(self.servicer))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(admin.SERVICE_NAME,
                                                  admin_handlers),))
        self.server.add_registered_method_handlers(admin.SERVICE_NAME,
                                                   admin_handlers)
        if self.envoy is not None:
            from jitauth import envoy

            envoy.add_services(
                self.server, self.envoy, lambda: self.servicer.authorizer,
                traced=self._tracer_provider is not None)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, admin.SERVICE_NAME, health.SERVICE_NAME,
             reflection.SERVICE_NAME),
            self.server)
        self._set_serving(False)

        # Open the data before taking connections, so a worker that can
        # open it never answers a first call with UNAVAILABLE.
        self._check_data()

        self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError("cannot listen on %s" % self.listen)
        self.server.start()
        self._watcher = threading.Thread(target=self._watch_data,
                                         name="jitauth-data", daemon=True)
        self._watcher.start()
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, drain calls in flight for up to ``grace``
        seconds, then close the data."""
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        log.info("draining calls in flight (up to %.1f s)", grace)
        self.server.stop(grace).wait()

        if self._watcher is not None:
            self._watcher.join(DATA_POLL_SECONDS * 2)
        authorizer, self.servicer.authorizer = self.servicer.authorizer, None
        if authorizer is not None:
            authorizer.close()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()

    def _watch_data(self) -> None:
        while not self._stopping.wait(DATA_POLL_SECONDS):
            self._check_data()

    def _check_data(self) -> None:
        authorizer = self.servicer.authorizer
        if authorizer is None:
            try:
                authorizer = self._open_authorizer(self.data_dir,
                                                   self.matcher)
            except Exception as exc:
                if not self._warned:
                    log.warning("cannot open data in %s (%s); answering "
                                "UNAVAILABLE until it can be opened",
                                self.data_dir, exc)
                    self._warned = True
                return
            if self._stopping.is_set():
                authorizer.close()
                return
            self._warned = False
            self.servicer.authorizer = authorizer

        try:
            serving = authorizer.refresh() > 0
            authorizer.maintain()
        except Exception:
            log.exception("cannot read the revision of %s", self.data_dir)
            serving = False
        if serving != self._serving and not self._stopping.is_set():
            if not serving:
                log.warning("no policy revision loaded in %s; health is "
                            "NOT_SERVING", self.data_dir)
            self._set_serving(serving)

    def _set_serving(self, serving: bool) -> None:
        self._serving = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)


def _open_authorizer(data_dir: str, matcher: str):
    from jitauth.authorizer import Authorizer

    authorizer = Authorizer(data_dir, matcher=matcher)
    audit.attach(authorizer, audit.config_from_env())
    return authorizer


# ---------------------------------------------------------------------------
# Worker processes


def reserve_port(listen: str) -> tuple[socket.socket, str, int]:
    """Bind (without listening) a SO_REUSEPORT socket on ``listen``.

    The parent holds it for its whole life so that every worker binds the
    same port, also when ``listen`` asks for port 0.  Returns the socket,
    the host and the real port.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("listen address must be HOST:PORT, got %r" % listen)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
    except OSError:
        sock.close()
        raise
    return sock, host, sock.getsockname()[1]


def _format_address(host: str, port: int) -> str:
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _worker_main(index: int, data_dir: str, address: str, matcher: str,
                 grace: float, log_level: int, envoy=None,
                 ready=None) -> None:
    from jitauth.cli import configure_logging

    configure_logging(log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    service = Service(data_dir, listen=address, matcher=matcher,
                      tracer_provider=telemetry.provider_from_env(),
                      envoy=envoy)
    service.start()
    log.info("worker %d (pid %d) serving on %s", index, os.getpid(),
             address)
    if ready is not None:
        ready.put(index)

    stop.wait()
    log.info("worker %d (pid %d) stopping", index, os.getpid())
    service.stop(grace)


def _wait_ready(ready, procs: dict, stopping) -> None:
    """Wait until every first worker takes connections, a worker dies, or
    ``READY_TIMEOUT`` passes: whoever reads the address may connect then."""
    waiting = set(procs)
    deadline = time.monotonic() + READY_TIMEOUT
    while waiting and not stopping.is_set():
        left = deadline - time.monotonic()
        if left <= 0 or any(not procs[i].is_alive() for i in waiting):
            log.warning("workers %s not serving yet; going on",
                        sorted(waiting))
            return
        try:
            waiting.discard(ready.get(timeout=min(left, 0.2)))
        except queue.Empty:
            pass


def serve(data_dir: str, listen: str, workers: int = 1, *,
          matcher: str = "compiled", grace: float = 5.0,
          on_listening=None, envoy=None, exporter=None) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit status.

    ``on_listening(address)`` is called with the real ``HOST:PORT`` once
    every worker takes connections (or after ``READY_TIMEOUT`` seconds).
    ``envoy``, a :class:`jitauth.envoy.Mapping`, makes every worker also
    serve Envoy's ext_authz and access log services.
    ``exporter``, a :class:`jitauth.metrics.Exporter`, hears of workers
    that exited.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    reserved, host, port = reserve_port(listen)
    address = _format_address(host, port)
    log.info("listening on %s with %d worker(s); data %s; matcher %s",
             address, workers, data_dir, matcher)

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    level = logging.getLogger("jitauth").getEffectiveLevel()

    def start(index: int, ready=None):
        proc = ctx.Process(
            target=_worker_main, name="jitauth-worker-%d" % index,
            args=(index, data_dir, address, matcher, grace, level, envoy,
                  ready))
        proc.start()
        return proc

    procs = {i: start(i, ready) for i in range(workers)}
    _wait_ready(ready, procs, stopping)
    if on_listening is not None:
        on_listening(address)
    restarts: list[float] = []
    status = 0
    try:
        while not stopping.is_set():
            sentinels = [p.sentinel for p in procs.values()]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            for index, proc in list(procs.items()):
                if proc.is_alive() or stopping.is_set():
                    continue
                log.error("worker %d (pid %d) exited with status %s",
                          index, proc.pid, proc.exitcode)
                if exporter is not None:
                    exporter.worker_exited(proc.pid)
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW]
                if len(restarts) >= MAX_RESTARTS:
                    log.error("%d worker restarts within %.0f s; giving up",
                              len(restarts), RESTART_WINDOW)
                    stopping.set()
                    status = 1
                    break
                restarts.append(now)
                procs[index] = start(index)
                log.info("worker %d restarted (pid %d)", index,
                         procs[index].pid)
    finally:
        log.info("shutting down %d worker(s)", len(procs))
        for proc in procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 5.0
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %d did not stop in time; killing it",
                          proc.pid)
                proc.kill()
                proc.join(5.0)
        reserved.close()
    log.info("stopped")
    return status
