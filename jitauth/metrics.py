"""Prometheus metrics: what the workers count, what the parent serves.

``jitauth serve --metrics-listen HOST:PORT`` makes the parent process
create a private directory, hand it to the workers as
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode: each
process writes its figures to memory-mapped files there) and serve the sum
over all workers, live and dead, on ``http://HOST:PORT/metrics``.  The
figures read from the store (live grants, quota reservations, revisions,
the audit sequence) are computed by the parent at scrape time.

Without ``--metrics-listen`` nothing here is imported by the workers and
the decision path pays one attribute test.
"""

import logging
import os
import shutil
import struct
import tempfile
import threading
import time

import grpc

from jitauth.telemetry import WrappingInterceptor

log = logging.getLogger(__name__)

ENV_FLAG = "JITAUTH_METRICS"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Decisions take tens of microseconds; calls that wait for the LMDB writer
# lock or the disk take milliseconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                   0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Store figures are recomputed at most this often, however often scraped.
STORE_CACHE_SECONDS = 1.0
# XXX: live grants are counted by walking the expiry index from its end;
# past this many grants the figure is a lower bound.
MAX_LIVE_SCAN = 1_000_000

_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_USAGE = struct.Struct(">qq")


def enabled(environ=os.environ) -> bool:
    return environ.get(ENV_FLAG) == "on" and bool(environ.get(MULTIPROC_DIR))


class WorkerMetrics:
    """The metrics one worker process updates."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.decisions = Counter(
            "jitauth_decisions", "Authorize decisions by decision and reason",
            ["decision", "reason"])
        self.latency = Histogram(
            "jitauth_request_duration_seconds",
            "Time spent serving a call, by method", ["method"],
            buckets=LATENCY_BUCKETS)
        self.errors = Counter(
            "jitauth_request_errors", "Calls answered with an error status",
            ["method", "code"])
        self.backlog = Gauge(
            "jitauth_audit_backlog", "Audit records waiting to be written",
            multiprocess_mode="livesum")
        self.dropped = Counter(
            "jitauth_audit_dropped",
            "Audit records dropped because the buffer was full")
        self.written = Counter(
            "jitauth_audit_buffered_written",
            "Buffered audit records written by the writer thread")
        self.disagreements = Counter(
            "jitauth_shadow_disagreements",
            "Decisions on which the shadow candidate disagrees",
            ["active_reason", "candidate_reason"])
        self.shadow_lost = Counter(
            "jitauth_shadow_disagreements_dropped",
            "Shadow disagreements not recorded: the buffer was full")
        self.candidate = Gauge(
            "jitauth_shadow_candidate_evaluated",
            "The shadow candidate a worker evaluates (0: none)",
            multiprocess_mode="livemax")
        self._decided = {}
        self._methods = {}

    def decided(self, decision: str, reason: str) -> None:
        child = self._decided.get((decision, reason))
        if child is None:
            child = self._decided[(decision, reason)] = \
                self.decisions.labels(decision, reason)
        child.inc()

    def timer(self, method: str):
        child = self._methods.get(method)
        if child is None:
            child = self._methods[method] = self.latency.labels(method)
        return child

    def audit_dropped(self) -> None:
        self.dropped.inc()

    def audit_written(self, n: int) -> None:
        self.written.inc(n)

    def audit_backlog(self, n: int) -> None:
        self.backlog.set(n)

    def shadow_disagreed(self, active: str, candidate: str) -> None:
        self.disagreements.labels(active, candidate).inc()

    def shadow_dropped(self) -> None:
        self.shadow_lost.inc()

    def shadow_candidate(self, candidate_id: int) -> None:
        self.candidate.set(candidate_id)


_worker = None
_worker_lock = threading.Lock()


def worker_metrics():
    """This process's metrics, or None when metrics are off."""
    global _worker
    if not enabled():
        return None
    with _worker_lock:
        if _worker is None:
            _worker = WorkerMetrics()
        return _worker


class ServerMetrics(WrappingInterceptor):
    """Times every call and counts Authorize decisions by reason."""

    def __init__(self, metrics: WorkerMetrics):
        from jitauth.v1 import authorizer_pb2 as pb

        super().__init__()
        self.metrics = metrics
        self._reasons = {value.number: value.name.removeprefix("REASON_")
                         .lower() for value in pb.Reason.DESCRIPTOR.values}
        self._allow = pb.DECISION_ALLOW

    def _wrap(self, method: str, handler):
        method = method.rpartition("/")[2]
        metrics = self.metrics
        timer = metrics.timer(method)
        behavior = handler.unary_unary
        counts = method == "Authorize"
        reasons = self._reasons
        allow = self._allow

        def measured(request, context):
            start = time.perf_counter()
            try:
                response = behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                metrics.errors.labels(method, code.name).inc()
                raise
            finally:
                timer.observe(time.perf_counter() - start)
            if counts:
                metrics.decided(
                    "allow" if response.decision == allow else "deny",
                    reasons.get(response.reason, str(response.reason)))
            return response

        return grpc.unary_unary_rpc_method_handler(
            measured, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


# ---------------------------------------------------------------------------
# The parent process


class StoreCollector:
    """Figures read from the LMDB environment at scrape time."""

    def __init__(self, data_dir: str, clock=time.time):
        self.data_dir = data_dir
        self.clock = clock
        self._store = None
        self._cached = (0.0, [])
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            at, families = self._cached
            if time.monotonic() - at >= STORE_CACHE_SECONDS:
                families = self._read()
                self._cached = (time.monotonic(), families)
        return iter(families)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _read(self) -> list:
        from jitauth._core import StoreError
        from jitauth.store import Store

        try:
            if self._store is None:
                self._store = Store(self.data_dir, readonly=True)
            return self._families(self._store)
        except StoreError as exc:
            log.debug("store figures unavailable: %s", exc)
            self.close()
            return []

    def _families(self, store) -> list:
        from prometheus_client.core import GaugeMetricFamily

        from jitauth import audit, shadow

        now_ms = int(self.clock() * 1000)
        with store.env.begin() as txn:
            revision = store.current_revision(txn)
            candidate = txn.get(store.shadow, shadow.CANDIDATE_ID)
            last = audit.last_sequence(store, txn)
            first = audit.first_sequence(store, txn)
            live = _live_grants(store, txn, now_ms)
            reserved = _reserved_units(store, txn)

        out = [
            GaugeMetricFamily("jitauth_policy_revision",
                              "The active policy revision", value=revision),
            GaugeMetricFamily("jitauth_shadow_candidate",
                              "The installed shadow candidate (0: none)",
                              value=_U64.unpack(candidate)[0]
                              if candidate else 0),
            GaugeMetricFamily("jitauth_live_grants",
                              "Grants live now", value=live),
            GaugeMetricFamily("jitauth_audit_last_sequence",
                              "Sequence number of the newest audit record",
                              value=last),
            GaugeMetricFamily("jitauth_audit_first_sequence",
                              "Sequence number of the oldest audit record "
                              "kept", value=first),
        ]
        units = GaugeMetricFamily(
            "jitauth_quota_reserved_units",
            "Quota units reserved by grants not yet settled", labels=["quota"])
        for quota, n in sorted(reserved.items()):
            units.add_metric([quota], n)
        out.append(units)
        return out


def _live_grants(store, txn, now_ms: int) -> int:
    """Grants whose expiry is ahead and whose state is still live."""
    from jitauth.model import GrantState

    fetch = 1024
    while True:
        keys = txn.items(store.expiries, limit=fetch, reverse=True)
        if (len(keys) < fetch or fetch >= MAX_LIVE_SCAN
                or _I64.unpack_from(keys[-1][0])[0] <= now_ms):
            break
        fetch *= 4
    live = 0
    for key, _ in keys:
        if _I64.unpack_from(key)[0] <= now_ms:
            break
        record = txn.get(store.grants, key[8:])
        if record is not None and record[1] == GrantState.LIVE:
            live += 1
    return live


def _reserved_units(store, txn) -> dict:
    """Reserved units by quota name, over all stored periods."""
    out = {}
    for key, value in txn.items(store.usage):
        reserved = _USAGE.unpack(value)[1]
        if reserved <= 0:
            continue
        (size,) = struct.unpack_from("<H", key)
        pos = 2 + size
        (qsize,) = struct.unpack_from("<H", key, pos)
        quota = key[pos + 2:pos + 2 + qsize].decode()
        out[quota] = out.get(quota, 0) + reserved
    return out


class Exporter:
    """The parent's metrics endpoint over the workers' figures.

    Create it before the workers start: it sets ``PROMETHEUS_MULTIPROC_DIR``
    and ``JITAUTH_METRICS`` in this process's environment, which spawned
    workers inherit.  ``close()`` stops serving and removes the directory.
    """

    def __init__(self, listen: str, data_dir: str):
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("metrics address must be HOST:PORT, got %r"
                             % listen)
        host = host.strip("[]")
        self.directory = tempfile.mkdtemp(prefix="jitauth-metrics-")
        try:
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, path=self.directory)
            self.store_figures = StoreCollector(data_dir)
            registry.register(self.store_figures)
            self._server, self._thread = start_http_server(
                int(port), addr=host, registry=registry)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        bound = self._server.server_address[1]
        self.address = ("[%s]:%d" if ":" in host else "%s:%d") % (host,
                                                                  bound)
        os.environ[MULTIPROC_DIR] = self.directory
        os.environ[ENV_FLAG] = "on"
        log.info("metrics on http://%s/metrics", self.address)

    def worker_exited(self, pid: int) -> None:
        """Forget the live gauges of a worker that is gone."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.directory)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.store_figures.close()
        os.environ.pop(MULTIPROC_DIR, None)
        os.environ.pop(ENV_FLAG, None)
        shutil.rmtree(self.directory, ignore_errors=True)
