"""Grants: short-lived permissions bound to one approved action.

A grant is issued by an allow and lives in LMDB, so any worker process can
complete it.  It ends when the caller completes it, when an operator revokes
it, or when its time runs out.  Expiry is checked whenever a grant is used
or counted; ``purge`` only deletes records long dead.

A grant that holds a concurrency slot has a record in ``seats`` under its
limit key.  Counting and taking a slot happen in one write transaction, and
LMDB admits one writer at a time across all processes, so two workers can
never both take the last slot.
"""

import os
import struct
from dataclasses import dataclass

from jitauth.model import (
    CompleteResult,
    GrantNotFound,
    GrantState,
    InvalidInput,
    Outcome,
)

GRANT_ID_BYTES = 16     # 128 random bits
RECORD_VERSION = 1

_HEAD = struct.Struct("<BBBxqqqQ")
_U16 = struct.Struct("<H")
_I64 = struct.Struct(">q")
_STRINGS = ("account_id", "subject_id", "action", "resource_type",
            "resource_id", "rule_id", "limit", "request_id", "decision_id")


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
    resource_type: str
    resource_id: str
    rule_id: str
    limit: str
    request_id: str
    decision_id: str

    def encode(self) -> bytes:
        out = bytearray(_HEAD.pack(
            RECORD_VERSION, int(self.state),
            int(self.outcome) if self.outcome else 0, self.issued_at_ms,
            self.expires_at_ms, self.ended_at_ms, self.revision))
        for name in _STRINGS:
            data = getattr(self, name).encode()
            out += _U16.pack(len(data))
            out += data
        return bytes(out)

    @classmethod
    def decode(cls, grant_id: bytes, record: bytes) -> "Grant":
        (_, state, outcome, issued, expires, ended, revision
         ) = _HEAD.unpack_from(record)
        pos = _HEAD.size
        strings = []
        for _ in _STRINGS:
            (size,) = _U16.unpack_from(record, pos)
            strings.append(record[pos + 2:pos + 2 + size].decode())
            pos += 2 + size
        return cls(grant_id, GrantState(state),
                   Outcome(outcome) if outcome else None, issued, expires,
                   ended, revision, *strings)


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


def limit_key(account_id: str, limit: str) -> bytes:
    """The seats prefix of one limit of one account."""
    account, name = account_id.encode(), limit.encode()
    return _U16.pack(len(account)) + account + _U16.pack(len(name)) + name


def live_seats(store, txn, key: bytes, now_ms: int) -> int:
    """Count the live slots under ``key``, deleting expired ones found."""
    live = 0
    for seat, value in txn.items(store.seats, key):
        if len(seat) != len(key) + GRANT_ID_BYTES:
            continue  # a longer limit name sharing this prefix
        if _I64.unpack(value)[0] > now_ms:
            live += 1
        elif txn.write:
            txn.delete(store.seats, seat)
    return live


def issue(store, txn, grant: Grant, limit_max: int) -> bool:
    """Store ``grant`` in the write transaction ``txn``.

    With a limit, first count its live slots: at ``limit_max`` nothing is
    stored and False is returned.
    """
    if grant.limit:
        key = limit_key(grant.account_id, grant.limit)
        if live_seats(store, txn, key, grant.issued_at_ms) >= limit_max:
            return False
        txn.put(store.seats, key + grant.grant_id,
                _I64.pack(grant.expires_at_ms))

    txn.put(store.grants, grant.grant_id, grant.encode())
    txn.put(store.expiries, _I64.pack(grant.expires_at_ms) + grant.grant_id,
            b"")
    return True


def _end(store, txn, grant: Grant, state: GrantState, ended_at_ms: int,
         outcome: Outcome | None) -> None:
    grant.state = state
    grant.ended_at_ms = ended_at_ms
    grant.outcome = outcome
    txn.put(store.grants, grant.grant_id, grant.encode())
    if grant.limit:
        txn.delete(store.seats,
                   limit_key(grant.account_id, grant.limit) + grant.grant_id)


def complete(store, grant_id: str, outcome: Outcome,
             now_ms: int) -> CompleteResult:
    """End a live grant; report the final state of one already ended."""
    raw = parse_grant_id(grant_id)

    with store.env.begin(write=True) as txn:
        record = txn.get(store.grants, raw)
        if record is None:
            raise GrantNotFound("no grant %s" % grant_id)
        grant = Grant.decode(raw, record)

        already = grant.state != GrantState.LIVE
        if not already and now_ms >= grant.expires_at_ms:
            _end(store, txn, grant, GrantState.EXPIRED, grant.expires_at_ms,
                 None)
            already = True
        elif not already:
            _end(store, txn, grant, GrantState.COMPLETED, now_ms, outcome)

    return CompleteResult(
        grant_id=grant_id,
        state=grant.state,
        already=already,
        outcome=grant.outcome,
        account_id=grant.account_id,
        action=grant.action,
        issued_at_ms=grant.issued_at_ms,
        expires_at_ms=grant.expires_at_ms,
        ended_at_ms=grant.ended_at_ms,
    )


def purge(store, now_ms: int, keep_ms: int, batch: int = 1000) -> int:
    """Delete grants whose expiry is more than ``keep_ms`` in the past.

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
                if grant.limit:
                    txn.delete(store.seats, limit_key(
                        grant.account_id, grant.limit) + grant_id)
                txn.delete(store.grants, grant_id)
            txn.delete(store.expiries, key)
            removed += 1
    return removed
