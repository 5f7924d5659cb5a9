"""The audit trail: one record per decision and per change of a grant.

Audit records are a stream of their own, apart from the logs.  They live in
the ``audit`` sub-database of the data directory's LMDB environment, keyed
by a sequence number (u64 big-endian) that has no gaps: the next number is
one more than the last key, read inside the write transaction that stores
the record, and LMDB admits one writer at a time across all processes, so
two workers can never take the same number and an aborted transaction takes
its number back with it.  (Retention never deletes the newest record, so
numbers are never handed out twice.)

Two ways a record reaches the store:

- *in the transaction of the change*: an allow's record is written in the
  write transaction that issues its grant, and the records of Complete,
  Renew, revocations and expiries in the transaction that changes the
  grant.  No grant exists without its record; no record exists for a change
  that did not happen.
- *buffered*: decisions that change nothing (denies, dry runs, replayed
  answers) go to a bounded per-process buffer that a background thread
  writes in batches, one write transaction per batch.  When the buffer is
  full the configuration says what happens: ``block`` (the deciding thread
  waits for room) or ``drop`` (the record is counted as dropped and an
  ``audit_dropped`` record saying how many follows in the stream).

The :class:`Recorder` also runs the shadow evaluation's upkeep (see
:mod:`jitauth.shadow`) and the retention purge.  Nothing here runs while
audit and shadow are off: the decision path pays one attribute test.
"""

import collections
import json
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass

import grpc

from jitauth.telemetry import WrappingInterceptor

log = logging.getLogger(__name__)

WHEN_FULL = ("block", "drop")

#: The fields of a record, in stored order (``seq`` is the key).
FIELDS = ("time_ms", "event", "decision_id", "account_id", "subject_id",
          "action", "resource_type", "resource_id", "decision", "reason",
          "rule_id", "revision", "grant_id", "outcome", "state",
          "expires_at_ms", "trace_id", "detail")
EVENTS = ("authorize", "complete", "renew", "revoke", "expire",
          "audit_dropped")

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000,
            "d": 86_400_000}
_STATES = {1: "live", 2: "completed", 3: "expired", 4: "revoked"}
_EVENT_OF_STATE = {2: "complete", 3: "expire", 4: "revoke"}
_OUTCOMES = {1: "success", 2: "failure", 3: "cancelled"}

# How often the writer thread wakes, and the most it writes in one
# transaction; retention purges delete this many records per transaction.
FLUSH_SECONDS = 0.1
BATCH = 1000
# The shadow candidate is looked for, and retention applied, this often.
SHADOW_POLL_SECONDS = 1.0
RETENTION_EVERY_SECONDS = 60.0


def parse_duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d`` (or a sum, ``1d12h``) in ms."""
    pos, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError("not a duration: %r (e.g. 90s, 15m, 12h, 30d)"
                         % text)
    return total


@dataclass(slots=True)
class AuditConfig:
    """What a server process records.

    ``buffer`` bounds the records waiting for the writer thread;
    ``when_full`` is ``block`` or ``drop``; ``retention_ms`` (0: keep
    everything) is how long records are kept.
    """

    audit: bool = True
    shadow: bool = True
    buffer: int = 10_000
    when_full: str = "block"
    retention_ms: int = 0

    def __post_init__(self):
        if self.when_full not in WHEN_FULL:
            raise ValueError("when_full must be block or drop, not %r"
                             % self.when_full)
        if self.buffer < 1:
            raise ValueError("the audit buffer holds at least one record")


def config_to_env(config: AuditConfig, environ=os.environ) -> None:
    """Hand ``config`` to worker processes through their environment."""
    environ["JITAUTH_AUDIT"] = "on" if config.audit else "off"
    environ["JITAUTH_SHADOW"] = "on" if config.shadow else "off"
    environ["JITAUTH_AUDIT_BUFFER"] = str(config.buffer)
    environ["JITAUTH_AUDIT_WHEN_FULL"] = config.when_full
    environ["JITAUTH_AUDIT_RETENTION_MS"] = str(config.retention_ms)


def config_from_env(environ=os.environ) -> AuditConfig | None:
    """The configuration ``jitauth serve`` handed down, or None when the
    environment asks for neither audit nor shadow evaluation."""
    config = AuditConfig(
        audit=environ.get("JITAUTH_AUDIT", "off") == "on",
        shadow=environ.get("JITAUTH_SHADOW", "off") == "on",
        buffer=int(environ.get("JITAUTH_AUDIT_BUFFER", 10_000)),
        when_full=environ.get("JITAUTH_AUDIT_WHEN_FULL", "block"),
        retention_ms=int(environ.get("JITAUTH_AUDIT_RETENTION_MS", 0)))
    if not config.audit and not config.shadow:
        return None
    return config


# ---------------------------------------------------------------------------
# The caller's trace id


_caller = threading.local()


def caller_trace_id() -> str:
    """The trace id of the call this thread is serving ("" if none)."""
    return getattr(_caller, "trace_id", "")


def _trace_id(metadata) -> str:
    for key, value in metadata:
        if key == "traceparent":
            parts = value.split("-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1]
    return ""


class CallerTrace(WrappingInterceptor):
    """Notes the trace id of each call's W3C ``traceparent`` for the audit
    records written while serving it."""

    def _wrap(self, method: str, handler):
        behavior = handler.unary_unary
        caller = _caller

        def noted(request, context):
            caller.trace_id = _trace_id(context.invocation_metadata())
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            noted, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


# ---------------------------------------------------------------------------
# Records


_JSON = json.JSONEncoder(separators=(",", ":"))


def encode(fields: tuple) -> bytes:
    """The stored form: time (i64 ms big-endian), then the other fields as
    a JSON array in ``FIELDS`` order."""
    return _I64.pack(fields[0]) + _JSON.encode(fields[1:]).encode()


def decode(seq: int, value: bytes) -> dict:
    """A stored record as a dict: ``seq`` and every name of ``FIELDS``."""
    record = {"seq": seq, "time_ms": _I64.unpack_from(value)[0]}
    record.update(zip(FIELDS[1:], json.loads(value[8:]), strict=True))
    return record


def record_time_ms(value: bytes) -> int:
    return _I64.unpack_from(value)[0]


def _decision_fields(q, result, time_ms: int, outcome: str) -> tuple:
    return (time_ms, "authorize", result.decision_id, q.account_id,
            q.subject_id, q.action, q.resource_type, q.resource_id,
            "allow" if result.allowed else "deny",
            result.reason.name.lower(), result.rule_id, result.revision,
            result.grant_id, outcome, "", result.expires_at_ms,
            caller_trace_id(), "")


def _grant_fields(grant, event: str, time_ms: int, detail: str) -> tuple:
    return (time_ms, event, grant.decision_id, grant.account_id,
            grant.subject_id, grant.action, grant.resource_type,
            grant.resource_id, "", "", grant.rule_id, grant.revision,
            grant.grant_id.hex(), _OUTCOMES.get(int(grant.outcome or 0), ""),
            _STATES[int(grant.state)], grant.expires_at_ms,
            caller_trace_id(), detail)


def append(store, txn, fields: tuple) -> int:
    """Store one record in the write transaction ``txn``; its number."""
    seq = last_sequence(store, txn) + 1
    txn.put(store.audit, _U64.pack(seq), encode(fields))
    return seq


def last_sequence(store, txn) -> int:
    """The newest record's number (0 when there is none)."""
    last = txn.items(store.audit, limit=1, reverse=True)
    return _U64.unpack(last[0][0])[0] if last else 0


def first_sequence(store, txn) -> int:
    """The oldest record kept (0 when there is none)."""
    first = txn.items(store.audit, limit=1)
    return _U64.unpack(first[0][0])[0] if first else 0


def read(store, txn, seq: int) -> dict | None:
    value = txn.get(store.audit, _U64.pack(seq))
    return decode(seq, value) if value is not None else None


def purge(store, older_than_ms: int, batch: int = BATCH) -> int:
    """Delete up to ``batch`` of the oldest records written before
    ``older_than_ms`` in one write transaction; return how many.  The
    newest record always stays: the next number follows from it."""
    removed = 0
    with store.env.begin(write=True) as txn:
        newest = last_sequence(store, txn)
        for key, value in txn.items(store.audit, limit=batch):
            if record_time_ms(value) >= older_than_ms or \
                    _U64.unpack(key)[0] == newest:
                break
            txn.delete(store.audit, key)
            removed += 1
    return removed


# ---------------------------------------------------------------------------
# The recorder of one process


class Recorder:
    """Audit records and shadow upkeep of one worker process.

    Created by :func:`attach`; ``close()`` (called by the Authorizer's
    ``close``) writes everything still buffered before it returns.
    """

    def __init__(self, authorizer, config: AuditConfig, metrics=None):
        self.authorizer = authorizer
        self.store = authorizer.store
        self.config = config
        self.clock = authorizer.clock
        self.metrics = metrics
        self.dropped = 0            # records dropped since the start
        self.written = 0            # records this process wrote
        self._unreported = 0        # dropped, not yet in the stream
        self._buffer = collections.deque()
        self._capacity = config.buffer
        self._block = config.when_full == "block"
        self._room = threading.Condition()
        self._waiting = 0
        self._wake = threading.Event()
        self._stopping = False
        self._shadow_due = 0.0
        self._retention_due = time.monotonic() + RETENTION_EVERY_SECONDS
        self._thread = threading.Thread(target=self._run,
                                        name="jitauth-audit", daemon=True)

    def start(self) -> None:
        if self.config.shadow:
            self._poll_shadow()
        self._thread.start()

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    # -- called on the decision path ----------------------------------------

    def granted(self, txn, q, result, grant) -> None:
        """The record of an allow, in the transaction issuing its grant."""
        fields = (grant.issued_at_ms, "authorize", result.decision_id,
                  q.account_id, q.subject_id, q.action, q.resource_type,
                  q.resource_id, "allow", "allowed_by_rule", result.rule_id,
                  result.revision, grant.grant_id.hex(), "granted", "live",
                  grant.expires_at_ms, caller_trace_id(), "")
        append(self.store, txn, fields)
        self.written += 1

    def decided(self, q, result, now_ms: int) -> None:
        """A decision that issued no grant: buffered for the writer."""
        if result.allowed and result.grant_id and not result.replayed:
            return  # recorded with its grant
        if result.replayed:
            outcome = "replayed"
        elif result.dry_run:
            outcome = "dry_run"
        else:
            outcome = ""
        self._enqueue(_decision_fields(q, result, now_ms, outcome))

    def grant_ended(self, txn, grant) -> None:
        """Completed, revoked or expired: in the transaction ending it."""
        event = _EVENT_OF_STATE[int(grant.state)]
        append(self.store, txn, _grant_fields(grant, event, self.clock(), ""))
        self.written += 1

    def grant_touched(self, txn, grant, event: str, detail: str) -> None:
        """A renewal, or a Complete of a grant that had already ended."""
        append(self.store, txn, _grant_fields(grant, event, self.clock(),
                                              detail))
        self.written += 1

    def shadow_disagreed(self, item: tuple) -> None:
        """A shadow disagreement; never blocks a decision."""
        if len(self._buffer) >= self._capacity:
            if self.metrics is not None:
                self.metrics.shadow_dropped()
            return
        self._buffer.append(item)

    def _enqueue(self, fields: tuple) -> None:
        buffer = self._buffer
        if len(buffer) >= self._capacity and not self._make_room():
            return
        buffer.append(fields)
        if len(buffer) >= BATCH:
            self._wake.set()

    def _make_room(self) -> bool:
        """Wait for room (block) or count a drop (drop); False: dropped."""
        if not self._block or self._stopping:
            self.dropped += 1
            self._unreported += 1
            if self.metrics is not None:
                self.metrics.audit_dropped()
            return False
        self._wake.set()
        with self._room:
            self._waiting += 1
            try:
                while len(self._buffer) >= self._capacity:
                    self._room.wait(FLUSH_SECONDS)
            finally:
                self._waiting -= 1
        return True

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self._flush()
                self._upkeep()
            except Exception:
                log.exception("audit writer failed; retrying in 1 s")
                time.sleep(1.0)

    def _flush(self) -> None:
        """Write everything buffered, ``BATCH`` records per transaction."""
        from jitauth import shadow

        buffer = self._buffer
        while buffer or self._unreported:
            records, disagreements = [], []
            while buffer and len(records) + len(disagreements) < BATCH:
                item = buffer.popleft()
                if item[0] == shadow.MARK:
                    disagreements.append(item)
                else:
                    records.append(item)
            dropped, self._unreported = self._unreported, 0
            try:
                self._write(records, disagreements, dropped)
            except BaseException:
                self._unreported += dropped
                buffer.extendleft(reversed(records + disagreements))
                raise
            if self._waiting:
                with self._room:
                    self._room.notify_all()
        if self.metrics is not None:
            self.metrics.audit_backlog(len(buffer))

    def _write(self, records: list, disagreements: list, dropped: int):
        from jitauth import shadow

        store = self.store
        with store.env.begin(write=True) as txn:
            for fields in records:
                append(store, txn, fields)
            if dropped:
                append(store, txn, (
                    self.clock(), "audit_dropped", "", "", "", "", "", "",
                    "", "", "", 0, "", str(dropped), "", 0, "",
                    "%d records dropped: audit buffer full (pid %d)"
                    % (dropped, os.getpid())))
            if disagreements:
                shadow.store_disagreements(store, txn, disagreements)
        self.written += len(records) + (1 if dropped else 0)
        if self.metrics is not None and records:
            self.metrics.audit_written(len(records))

    def _upkeep(self) -> None:
        now = time.monotonic()
        if self.config.shadow and now >= self._shadow_due:
            self._shadow_due = now + SHADOW_POLL_SECONDS
            self._poll_shadow()
        if self.config.retention_ms and now >= self._retention_due:
            self._retention_due = now + RETENTION_EVERY_SECONDS
            horizon = self.clock() - self.config.retention_ms
            while purge(self.store, horizon) == BATCH:
                pass

    def _poll_shadow(self) -> None:
        from jitauth import shadow

        shadow.refresh(self.authorizer, self)

    def close(self) -> None:
        """Stop the writer thread after it has written everything."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        with self._room:
            self._room.notify_all()
        self._flush()
        if self.config.shadow:
            self._poll_shadow()  # store the last evaluated count
        self.authorizer.shadow = None


def attach(authorizer, config: AuditConfig | None):
    """Give ``authorizer`` a recorder for ``config`` (None: nothing)."""
    if config is None:
        return None
    from jitauth import metrics

    recorder = Recorder(authorizer, config, metrics.worker_metrics())
    authorizer.recorder = recorder
    if config.audit:
        authorizer.audit = recorder
        authorizer.store.recorder = recorder
    recorder.start()
    return recorder


# ---------------------------------------------------------------------------
# ``jitauth audit``

# Buffered records carry the time they were decided but get their number
# when written, so times are ordered only to within this much.
_TIME_SLACK_MS = 60_000
_FOLLOW_POLL_SECONDS = 0.25
_READ_CHUNK = 1000


def parse_time_ms(text: str, now_ms: int) -> int:
    """ISO-8601 (``2026-05-01T12:00:00Z``) or a duration ago (``15m``)."""
    from datetime import datetime, timezone

    try:
        return now_ms - parse_duration_ms(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not a time: %r (ISO-8601, or a duration ago such "
                         "as 15m)" % text) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _seek(store, since_ms: int, first: int, last: int) -> int:
    """A sequence number at or before the first record since ``since_ms``."""
    lo, hi = first, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        with store.env.begin() as txn:
            value = txn.get(store.audit, _U64.pack(mid))
        if value is None or record_time_ms(value) < since_ms - _TIME_SLACK_MS:
            lo = mid + 1
        else:
            hi = mid
    return lo


class Query:
    """Which records ``jitauth audit`` prints."""

    def __init__(self, since_ms=None, until_ms=None, **equal):
        self.since_ms = since_ms
        self.until_ms = until_ms
        self.equal = {k: v for k, v in equal.items() if v is not None}

    def matches(self, record: dict) -> bool:
        if self.since_ms is not None and record["time_ms"] < self.since_ms:
            return False
        if self.until_ms is not None and record["time_ms"] >= self.until_ms:
            return False
        return all(record[k] == v for k, v in self.equal.items())

    def past_end(self, record: dict) -> bool:
        return (self.until_ms is not None
                and record["time_ms"] >= self.until_ms + _TIME_SLACK_MS)


def read_batch(store, seq: int, query: Query) -> tuple:
    """Up to ``_READ_CHUNK`` records from sequence ``seq`` on, in one read
    transaction: ``(matching records, next sequence, state)``, where state
    is ``more``, ``caught_up`` (nothing newer yet) or ``ended`` (past
    ``--until``)."""
    found = []
    with store.env.begin() as txn:
        last = last_sequence(store, txn)
        seq = max(seq, first_sequence(store, txn))
        end = min(last, seq + _READ_CHUNK - 1)
        for n in range(seq, end + 1):
            value = txn.get(store.audit, _U64.pack(n))
            if value is None:
                continue
            record = decode(n, value)
            if query.past_end(record):
                return found, n, "ended"
            if query.matches(record):
                found.append(record)
    seq = max(seq, end + 1)
    return found, seq, "more" if seq <= last else "caught_up"


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(record: dict) -> str:
    """One readable line per record."""
    parts = ["#%d" % record["seq"], _iso(record["time_ms"]), record["event"]]
    if record["decision"]:
        parts.append("%s %s" % (record["decision"].upper(), record["reason"]))
    if record["state"]:
        parts.append(record["state"])
    if record["outcome"]:
        parts.append("outcome=%s" % record["outcome"])
    if record["account_id"]:
        parts.append("%s/%s" % (record["account_id"], record["subject_id"]))
    if record["action"]:
        parts.append(record["action"])
    if record["resource_type"] or record["resource_id"]:
        parts.append("%s:%s" % (record["resource_type"],
                                record["resource_id"]))
    for label, name in (("rule", "rule_id"), ("rev", "revision"),
                        ("grant", "grant_id"), ("decision", "decision_id"),
                        ("trace", "trace_id")):
        if record[name]:
            parts.append("%s=%s" % (label, record[name]))
    if record["detail"]:
        parts.append("(%s)" % record["detail"])
    return " ".join(str(p) for p in parts)


def run_query(args) -> int:
    """``jitauth audit``: print matching records; 0, or 2 on bad input."""
    import signal
    import sys

    from jitauth._core import StoreError
    from jitauth.store import Store

    now_ms = int(time.time() * 1000)
    if args.follow_for is not None and not args.follow:
        print("error: --follow-for needs --follow", file=sys.stderr)
        return 2
    for option in ("account", "subject", "action"):
        if getattr(args, option) == "":
            print("error: --%s: must not be empty" % option,
                  file=sys.stderr)
            return 2
    try:
        query = Query(
            since_ms=parse_time_ms(args.since, now_ms) if args.since
            else None,
            until_ms=parse_time_ms(args.until, now_ms) if args.until
            else None,
            account_id=args.account, subject_id=args.subject,
            action=args.action, decision=args.decision, event=args.event)
        store = Store(args.data)
    except (ValueError, StoreError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2

    stop = threading.Event()
    if args.follow:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = (time.monotonic() + args.follow_for
                if args.follow_for is not None else None)
    out = sys.stdout
    printed = 0
    try:
        with store.env.begin() as txn:
            first = first_sequence(store, txn) or 1
            last = last_sequence(store, txn)
        seq = (_seek(store, query.since_ms, first, last)
               if query.since_ms is not None else first)
        while True:
            found, seq, state = read_batch(store, seq, query)
            for record in found:
                out.write(json.dumps(record) if args.json
                          else describe(record))
                out.write("\n")
                printed += 1
                if args.limit is not None and printed >= args.limit:
                    return 0
            out.flush()
            if state == "more":
                continue
            if state == "ended" or not args.follow or stop.is_set() or (
                    deadline is not None and time.monotonic() >= deadline):
                return 0
            stop.wait(_FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    finally:
        store.close()
