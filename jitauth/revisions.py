"""Policy revisions: install a new one, list them, roll back to one.

A **revision** is one compiled policy stored under a number.  ``meta/
revision`` names the active one; every worker compares it with its
matcher's inside the read transaction of each decision, so a revision
installed here decides the next request of every running worker, and no
request sees two revisions.

History is append-only: numbers only grow, and a rollback installs a copy
of an old revision under a new number.  The last ``keep`` revisions are kept
(the active one always); older ones are pruned in the transaction that
installs a new one.  Installing touches the policy only: licenses stay.
"""

import json
import logging
import os
import struct
import time
from dataclasses import dataclass

from jitauth.policy import check_matchers, compile_policy, read_source
from jitauth.store import REVISION_KEY, Store, revision_key

log = logging.getLogger(__name__)

DEFAULT_KEEP = 20

_U64 = struct.Struct(">Q")


class RevisionError(ValueError):
    """A revision command cannot be carried out; nothing was changed."""


@dataclass(slots=True)
class RevisionInfo:
    revision: int
    active: bool
    loaded_at_ms: int
    origin: str             # load, apply or rollback
    policy_file: str
    rules: int
    rolled_back_from: int | None = None


def open_store(data_dir: str) -> Store:
    """The store of an existing data directory (never creates one)."""
    if not os.path.exists(os.path.join(data_dir, "data.mdb")):
        raise RevisionError("no jitauth data in %s (run jitauth load first)"
                            % data_dir)
    return Store(data_dir)


def _revision_at(txn, db, reverse: bool) -> int:
    edge = txn.items(db, limit=1, reverse=reverse)
    return _U64.unpack(edge[0][0])[0] if edge else 0


def newest_revision(store: Store, txn) -> int:
    """The highest revision number ever stored (0: none)."""
    return max(_revision_at(txn, store.revisions, True),
               store.current_revision(txn))


def stored_revisions(store: Store, txn) -> list:
    """The numbers of the stored revisions, ascending."""
    first = _revision_at(txn, store.revisions, False)
    if first == 0:
        return []
    return [n for n in range(first, newest_revision(store, txn) + 1)
            if txn.get(store.revisions, revision_key(n)) is not None]


def install(store: Store, txn, policy: bytes, source: dict,
            keep: int = DEFAULT_KEEP) -> int:
    """Store a compiled policy as the new active revision; return it.

    Runs inside the caller's write transaction, which may change licenses
    too (``jitauth load``).  ``source`` describes where the policy came
    from; ``loaded_at_ms`` is added.  Prunes all but the newest ``keep``.
    """
    if keep < 1:
        raise RevisionError("keep must be at least 1")
    revision = newest_revision(store, txn) + 1
    source = dict(source, loaded_at_ms=int(time.time() * 1000))

    key = revision_key(revision)
    txn.put(store.revisions, key, policy)
    txn.put(store.sources, key, json.dumps(source).encode())
    txn.put(store.meta, REVISION_KEY, key)

    _prune(store, txn, revision - keep)
    return revision


def _prune(store: Store, txn, up_to: int) -> None:
    """Delete revisions numbered ``up_to`` and below, except the active."""
    first = _revision_at(txn, store.revisions, False)
    if first == 0 or first > up_to:
        return
    active = store.current_revision(txn)
    for revision in range(first, up_to + 1):
        if revision != active:
            txn.delete(store.revisions, revision_key(revision))
            txn.delete(store.sources, revision_key(revision))


def compiled_bytes(policy: dict) -> bytes:
    """The canonical JSON every revision is stored as."""
    return json.dumps(policy, sort_keys=True).encode()


def apply(data_dir: str, policy_path: str, *,
          keep: int = DEFAULT_KEEP) -> int:
    """Validate a policy file and install it as the new active revision.

    Raises ``jitauth.policy.SourceError`` for an invalid file and
    ``RevisionError`` without data, before writing anything.  The revision
    is flushed to disk before this returns.
    """
    text = read_source(policy_path)
    policy = compile_policy(policy_path, text)
    compiled = compiled_bytes(policy)

    store = open_store(data_dir)
    try:
        with store.env.begin(write=True) as txn:
            revision = install(store, txn, compiled, {
                "origin": "apply",
                "policy_file": os.path.abspath(policy_path),
                "policy_source": text,
                "rules": len(policy["rules"]),
            }, keep)
        store.env.sync()
    finally:
        store.close()

    log.info("applied revision %d from %s: %d rules", revision,
             policy_path, len(policy["rules"]))
    return revision


def rollback(data_dir: str, to: int, *, keep: int = DEFAULT_KEEP) -> int:
    """Install a copy of revision ``to`` as a new revision; return it.

    Raises ``RevisionError`` when ``to`` is not stored (pruned or never
    made), and ``jitauth.policy.SourceError`` when no matcher can be built
    from it (a revision stored before the compiler refused such policies);
    then nothing changes.
    """
    store = open_store(data_dir)
    try:
        with store.env.begin(write=True) as txn:
            policy = txn.get(store.revisions, revision_key(to))
            if policy is None:
                raise RevisionError(_missing(store, txn, to))
            old = store.revision_info(txn, to)
            check_matchers(json.loads(policy),
                           old.get("policy_file") or "revision %d" % to)
            revision = install(store, txn, policy, {
                "origin": "rollback",
                "rolled_back_from": to,
                "policy_file": old.get("policy_file", ""),
                "policy_source": old.get("policy_source", ""),
                "rules": len(json.loads(policy)["rules"]),
            }, keep)
        store.env.sync()
    finally:
        store.close()

    log.info("rolled back to revision %d as revision %d", to, revision)
    return revision


def _missing(store: Store, txn, wanted: int) -> str:
    kept = stored_revisions(store, txn)
    newest = newest_revision(store, txn)
    if not kept:
        return "revision %d does not exist: no revision is stored" % wanted
    span = "%d to %d" % (kept[0], kept[-1]) if len(kept) > 1 \
        else "%d" % kept[0]
    if 1 <= wanted < kept[0]:
        return ("revision %d no longer exists: it was pruned (the store "
                "keeps the newest revisions, now %s)" % (wanted, span))
    if wanted > newest or wanted < 1:
        return ("revision %d does not exist (the newest is %d; stored: %s)"
                % (wanted, newest, span))
    return "revision %d no longer exists (stored: %s)" % (wanted, span)


def list_revisions(data_dir: str) -> list:
    """The stored revisions, newest first."""
    store = open_store(data_dir)
    try:
        with store.env.begin() as txn:
            active = store.current_revision(txn)
            out = []
            for revision in reversed(stored_revisions(store, txn)):
                info = store.revision_info(txn, revision)
                rules = info.get("rules")
                if rules is None:
                    rules = len(store.read_policy(txn, revision)["rules"])
                out.append(RevisionInfo(
                    revision=revision,
                    active=revision == active,
                    loaded_at_ms=info.get("loaded_at_ms", 0),
                    origin=info.get("origin", "load"),
                    policy_file=info.get("policy_file", ""),
                    rules=rules,
                    rolled_back_from=info.get("rolled_back_from")))
    finally:
        store.close()
    return out
