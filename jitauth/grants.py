"""Grants: short-lived permissions bound to one approved action.

A grant is issued by an allow and lives in LMDB, so any worker process can
complete it.  It ends when the caller completes it, when an operator revokes
it, or when its time runs out.  Expiry is checked whenever a grant is used
or counted; ``purge`` only settles and deletes records long dead.

What a grant holds:

- a *seat*: a slot of a concurrency limit, under a key scoped to the
  account, the account and subject, or the account and resource.  Counting
  and taking a slot happen in one write transaction, and LMDB admits one
  writer at a time across all processes, so two workers can never both take
  the last slot;
- a *reservation* of quota units in the counter of the current period.
  Completing with success consumes the reported units (by default the
  reserved ones); failure or cancellation releases them; a grant that
  expires uncompleted keeps them: they count as consumed.

Every function here takes the store and runs its own write transaction
unless it is given one; all of them decide with the ``now`` they are given.
"""

import calendar
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone

from jitauth.licenses import why_unusable
from jitauth.model import (
    CompleteResult,
    GrantNotFound,
    GrantState,
    InvalidInput,
    Outcome,
)

GRANT_ID_BYTES = 16     # 128 random bits
RECORD_VERSION = 1
# XXX: one request reserves at most this many quota units; larger figures
# are refused as absurd rather than risking overflow of the counters.
MAX_UNITS = 1_000_000

SCOPES = ("account", "subject", "resource")
PERIODS = ("hour", "day", "month")

_HEAD = struct.Struct("<BBBBqqqQqqq")
_U16 = struct.Struct("<H")
_I64 = struct.Struct(">q")
_USAGE = struct.Struct(">qq")
_STRINGS = ("account_id", "subject_id", "action", "resource_type",
            "resource_id", "rule_id", "limit", "quota", "request_id",
            "decision_id")


@dataclass(slots=True)
class Grant:
    grant_id: bytes
    state: GrantState
    outcome: Outcome | None
    issued_at_ms: int
    expires_at_ms: int
    ended_at_ms: int
    revision: int
    account_id: str
    subject_id: str
    action: str
    resource_type: str = ""
    resource_id: str = ""
    rule_id: str = ""
    limit: str = ""
    quota: str = ""
    request_id: str = ""
    decision_id: str = ""
    scope: int = 0              # index into SCOPES
    units: int = 0              # quota units reserved
    period_start_ms: int = 0    # the quota period the units belong to
    max_expires_at_ms: int = 0  # the latest expiry renewals may reach
    consumed: int = 0           # units consumed once settled

    def encode(self) -> bytes:
        parts = [_HEAD.pack(
            RECORD_VERSION, int(self.state),
            int(self.outcome) if self.outcome else 0, self.scope,
            self.issued_at_ms, self.expires_at_ms, self.ended_at_ms,
            self.revision, self.units, self.period_start_ms,
            self.max_expires_at_ms), _I64.pack(self.consumed)]
        for text in (self.account_id, self.subject_id, self.action,
                     self.resource_type, self.resource_id, self.rule_id,
                     self.limit, self.quota, self.request_id,
                     self.decision_id):
            data = text.encode()
            parts.append(_U16.pack(len(data)))
            parts.append(data)
        return b"".join(parts)

    @classmethod
    def decode(cls, grant_id: bytes, record: bytes) -> "Grant":
        (_, state, outcome, scope, issued, expires, ended, revision, units,
         period, max_expires) = _HEAD.unpack_from(record)
        (consumed,) = _I64.unpack_from(record, _HEAD.size)
        pos = _HEAD.size + 8
        strings = {}
        for name in _STRINGS:
            (size,) = _U16.unpack_from(record, pos)
            strings[name] = record[pos + 2:pos + 2 + size].decode()
            pos += 2 + size
        return cls(grant_id, GrantState(state),
                   Outcome(outcome) if outcome else None, issued, expires,
                   ended, revision, scope=scope, units=units,
                   period_start_ms=period, max_expires_at_ms=max_expires,
                   consumed=consumed, **strings)

    @property
    def id_hex(self) -> str:
        return self.grant_id.hex()

    def live_at(self, now_ms: int) -> bool:
        return self.state == GrantState.LIVE and now_ms < self.expires_at_ms


def new_grant_id() -> bytes:
    return os.urandom(GRANT_ID_BYTES)


def parse_grant_id(text: str) -> bytes:
    """The raw id of a grant id as clients see it (32 hex digits)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != GRANT_ID_BYTES or len(text) != 2 * GRANT_ID_BYTES:
        raise InvalidInput("grant_id", "must be 32 hexadecimal digits")
    return raw


def _lp(text: str) -> bytes:
    data = text.encode()
    return _U16.pack(len(data)) + data


def account_prefix(account_id: str) -> bytes:
    return _lp(account_id)


def seat_prefix(grant: Grant) -> bytes:
    """The key under which the slots of one scoped limit are counted."""
    key = _lp(grant.account_id) + _lp(grant.limit) + bytes([grant.scope])
    if SCOPES[grant.scope] == "subject":
        key += _lp(grant.subject_id)
    elif SCOPES[grant.scope] == "resource":
        key += _lp(grant.resource_type) + _lp(grant.resource_id)
    return key


def usage_key(account_id: str, quota: str, period_start_ms: int) -> bytes:
    return _lp(account_id) + _lp(quota) + _I64.pack(period_start_ms)


def period_bounds(period: str, now_ms: int) -> tuple:
    """Start and end (ms, UTC) of the calendar period containing now."""
    moment = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
    if period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end_s = calendar.timegm(start.timetuple()) + 3600
    elif period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end_s = calendar.timegm(start.timetuple()) + 86400
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0,
                               microsecond=0)
        year, month = divmod(start.month, 12)
        end_s = calendar.timegm((start.year + year, month + 1, 1, 0, 0, 0))
    return calendar.timegm(start.timetuple()) * 1000, end_s * 1000


def read_usage(store, txn, key: bytes) -> tuple:
    """(consumed, reserved) units of one quota period."""
    raw = txn.get(store.usage, key)
    return _USAGE.unpack(raw) if raw else (0, 0)


def _add_usage(store, txn, key: bytes, consumed: int, reserved: int) -> None:
    old_consumed, old_reserved = read_usage(store, txn, key)
    txn.put(store.usage, key, _USAGE.pack(old_consumed + consumed,
                                          max(0, old_reserved + reserved)))


def live_seats(store, txn, prefix: bytes, now_ms: int) -> list:
    """Expiries of the live slots under ``prefix``; drops expired ones."""
    live = []
    for seat, value in txn.items(store.seats, prefix):
        if len(seat) != len(prefix) + GRANT_ID_BYTES:
            continue  # a longer key that shares this prefix
        expires = _I64.unpack(value)[0]
        if expires > now_ms:
            live.append(expires)
        elif txn.write:
            txn.delete(store.seats, seat)
    return live


@dataclass(slots=True)
class Refusal:
    """Why a grant could not be issued, and when trying again may work."""

    what: str               # "limit" or "quota"
    retry_after_ms: int
    used: int
    maximum: int


def check(store, txn, grant: Grant, limit_max: int,
          quota_max: int) -> Refusal | None:
    """Why ``grant`` would not fit its limit or quota, or None if it
    fits.  Stores nothing; in a write transaction it drops expired slots."""
    now_ms = grant.issued_at_ms
    if grant.limit:
        live = live_seats(store, txn, seat_prefix(grant), now_ms)
        if len(live) >= limit_max:
            wait = min(live) - now_ms if live else 0
            return Refusal("limit", wait, len(live), limit_max)

    if grant.quota:
        consumed, reserved = read_usage(store, txn, usage_key(
            grant.account_id, grant.quota, grant.period_start_ms))
        if consumed + reserved + grant.units > quota_max:
            return Refusal("quota", 0, consumed + reserved, quota_max)
    return None


def issue(store, txn, grant: Grant, limit_max: int,
          quota_max: int) -> Refusal | None:
    """Store ``grant`` in the write transaction ``txn``.

    Checks the limit slots and the quota first; when either is exhausted,
    nothing is stored and the refusal is returned.
    """
    refusal = check(store, txn, grant, limit_max, quota_max)
    if refusal is not None:
        return refusal

    if grant.quota:
        _add_usage(store, txn, usage_key(grant.account_id, grant.quota,
                                         grant.period_start_ms),
                   0, grant.units)
    if grant.limit:
        txn.put(store.seats, seat_prefix(grant) + grant.grant_id,
                _I64.pack(grant.expires_at_ms))
    txn.put(store.grants, grant.grant_id, grant.encode())
    txn.put(store.expiries, _I64.pack(grant.expires_at_ms) + grant.grant_id,
            b"")
    txn.put(store.account_grants,
            account_prefix(grant.account_id) + grant.grant_id, b"")
    return None


def _load(store, txn, grant_id: bytes) -> Grant:
    record = txn.get(store.grants, grant_id)
    if record is None:
        raise GrantNotFound("no grant %s" % grant_id.hex())
    return Grant.decode(grant_id, record)


def _end(store, txn, grant: Grant, state: GrantState, ended_at_ms: int,
         outcome: Outcome | None, consumed: int) -> None:
    """Move a live grant to its final state; free and settle what it held."""
    grant.state = state
    grant.ended_at_ms = ended_at_ms
    grant.outcome = outcome
    grant.consumed = consumed
    txn.put(store.grants, grant.grant_id, grant.encode())
    if grant.limit:
        txn.delete(store.seats, seat_prefix(grant) + grant.grant_id)
    if grant.quota and grant.units:
        _add_usage(store, txn, usage_key(grant.account_id, grant.quota,
                                         grant.period_start_ms),
                   consumed, -grant.units)
    if store.recorder is not None:
        store.recorder.grant_ended(txn, grant)


def _expire_if_due(store, txn, grant: Grant, now_ms: int) -> None:
    """A live grant past its expiry becomes EXPIRED, its units consumed."""
    if grant.state == GrantState.LIVE and now_ms >= grant.expires_at_ms:
        _end(store, txn, grant, GrantState.EXPIRED, grant.expires_at_ms,
             None, grant.units)


def _result(grant: Grant, already: bool) -> CompleteResult:
    return CompleteResult(
        grant_id=grant.id_hex,
        state=grant.state,
        already=already,
        outcome=grant.outcome,
        account_id=grant.account_id,
        action=grant.action,
        issued_at_ms=grant.issued_at_ms,
        expires_at_ms=grant.expires_at_ms,
        ended_at_ms=grant.ended_at_ms,
        units=grant.units,
        consumed=grant.consumed,
    )


def complete(store, grant_id: str, outcome: Outcome, now_ms: int,
             units: int | None = None) -> CompleteResult:
    """End a live grant; report the final state of one already ended.

    ``units`` is what a successful action consumed, at most what was
    reserved (default: all of it).  Failure and cancellation consume none.
    """
    raw = parse_grant_id(grant_id)
    if units is not None and not 0 <= units <= MAX_UNITS:
        raise InvalidInput("units", "must be between 0 and %d" % MAX_UNITS)

    with store.env.begin(write=True) as txn:
        grant = _load(store, txn, raw)
        _expire_if_due(store, txn, grant, now_ms)
        if grant.state != GrantState.LIVE:
            if store.recorder is not None:
                store.recorder.grant_touched(txn, grant, "complete",
                                             "already_ended")
            return _result(grant, already=True)

        if units is not None and units > grant.units:
            raise InvalidInput("units", "%d exceeds the %d units reserved "
                               "by this grant" % (units, grant.units))
        consumed = 0
        if outcome == Outcome.SUCCESS:
            consumed = grant.units if units is None else units
        _end(store, txn, grant, GrantState.COMPLETED, now_ms, outcome,
             consumed)
    return _result(grant, already=False)


class GrantEnded(Exception):
    """The grant is no longer live; ``state`` says how it ended."""

    def __init__(self, grant: Grant):
        super().__init__("grant %s is %s" % (grant.id_hex,
                                             grant.state.name.lower()))
        self.state = grant.state


class LicenseUnusable(Exception):
    """The account's license no longer backs new time for its grants."""


def renew(store, grant_id: str, account_id: str, extend_by_ms: int,
          now_ms: int) -> Grant:
    """Push a live grant's expiry to ``now + extend_by``.

    Never beyond the rule's maximum lifetime (``InvalidInput`` naming
    ``extend_by``), never for another account's grant, never once the grant
    has ended (``GrantEnded``), never while the account's license is not
    active and valid (``LicenseUnusable``).
    """
    raw = parse_grant_id(grant_id)
    if extend_by_ms <= 0:
        raise InvalidInput("extend_by", "must be a positive duration")

    with store.env.begin(write=True) as txn:
        grant = _load(store, txn, raw)
        if grant.account_id != account_id:
            raise InvalidInput("account_id", "grant %s belongs to another "
                               "account" % grant_id)
        _expire_if_due(store, txn, grant, now_ms)
        if grant.state != GrantState.LIVE:
            raise GrantEnded(grant)
        why = why_unusable(txn.get(store.licenses, account_id.encode()),
                           now_ms)
        if why:
            raise LicenseUnusable("account %s %s: its grants cannot be "
                                  "renewed" % (account_id, why))

        expires = now_ms + extend_by_ms
        if expires > grant.max_expires_at_ms:
            latest = datetime.fromtimestamp(grant.max_expires_at_ms / 1000,
                                            timezone.utc)
            raise InvalidInput(
                "extend_by", "rule %s lets this grant live until %s at the "
                "latest: extend by %.3f s at most"
                % (grant.rule_id, latest.isoformat(timespec="seconds")
                   .replace("+00:00", "Z"),
                   max(0, grant.max_expires_at_ms - now_ms) / 1000))
        if expires <= grant.expires_at_ms:
            if store.recorder is not None:
                store.recorder.grant_touched(txn, grant, "renew",
                                             "unchanged")
            return grant

        txn.delete(store.expiries, _I64.pack(grant.expires_at_ms) + raw)
        grant.expires_at_ms = expires
        txn.put(store.grants, raw, grant.encode())
        txn.put(store.expiries, _I64.pack(expires) + raw, b"")
        if grant.limit:
            txn.put(store.seats, seat_prefix(grant) + raw, _I64.pack(expires))
        if store.recorder is not None:
            store.recorder.grant_touched(txn, grant, "renew", "")
    return grant


def revoke(store, grant_id: str, now_ms: int) -> CompleteResult:
    """Revoke one grant at once; its reserved units are released."""
    raw = parse_grant_id(grant_id)
    with store.env.begin(write=True) as txn:
        grant = _load(store, txn, raw)
        _expire_if_due(store, txn, grant, now_ms)
        if grant.state != GrantState.LIVE:
            return _result(grant, already=True)
        _end(store, txn, grant, GrantState.REVOKED, now_ms, None, 0)
    return _result(grant, already=False)


def revoke_account(store, account_id: str, now_ms: int) -> int:
    """Revoke every live grant of an account; return how many."""
    revoked = 0
    with store.env.begin(write=True) as txn:
        for grant in _account_grants(store, txn, account_id):
            _expire_if_due(store, txn, grant, now_ms)
            if grant.state == GrantState.LIVE:
                _end(store, txn, grant, GrantState.REVOKED, now_ms, None, 0)
                revoked += 1
    return revoked


def _account_grants(store, txn, account_id: str) -> list:
    prefix = account_prefix(account_id)
    out = []
    for key, _ in txn.items(store.account_grants, prefix):
        grant_id = key[len(prefix):]
        if len(grant_id) != GRANT_ID_BYTES:
            continue
        record = txn.get(store.grants, grant_id)
        if record is not None:
            out.append(Grant.decode(grant_id, record))
    return out


def live_grants(store, txn, account_id: str, now_ms: int) -> list:
    """The account's grants that are live at ``now``, oldest first."""
    live = [g for g in _account_grants(store, txn, account_id)
            if g.live_at(now_ms)]
    return sorted(live, key=lambda g: g.issued_at_ms)


def find(store, txn, grant_id: str) -> Grant:
    return _load(store, txn, parse_grant_id(grant_id))


# Grants one purge transaction removes at most (the writer lock is held
# that long).
PURGE_BATCH = 1000


def purge(store, now_ms: int, keep_ms: int,
          batch: int = PURGE_BATCH) -> int:
    """Settle and delete grants whose expiry is over ``keep_ms`` ago.

    Removes at most ``batch`` grants in one short write transaction and
    returns how many; call again while it returns ``batch``.
    """
    horizon = now_ms - keep_ms
    removed = 0
    with store.env.begin(write=True) as txn:
        for key, _ in txn.items(store.expiries, limit=batch):
            if _I64.unpack(key[:8])[0] >= horizon:
                break
            grant_id = key[8:]
            record = txn.get(store.grants, grant_id)
            if record is not None:
                grant = Grant.decode(grant_id, record)
                _expire_if_due(store, txn, grant, now_ms)
                txn.delete(store.grants, grant_id)
                txn.delete(store.account_grants,
                           account_prefix(grant.account_id) + grant_id)
                if grant.request_id:
                    txn.delete(store.requests, request_key(
                        grant.account_id, grant.request_id))
            txn.delete(store.expiries, key)
            removed += 1
    return removed


def request_key(account_id: str, request_id: str) -> bytes:
    return _lp(account_id) + request_id.encode()
