"""The LMDB store: policy revisions, licenses and grants in one environment.

Every worker process opens the same environment (after fork) and reads it
through the memory map; LMDB serialises writers across processes, which is
what makes grant issuing and seat counting atomic.  ``docs/internals.md``
lists the sub-databases and their layouts.

Durability of grant and usage writes is chosen with ``JITAUTH_DURABILITY``
(policy and license loads are always flushed before ``load`` returns):

- ``sync``: every commit is fsynced.  Nothing acknowledged is ever lost,
  and every allow waits for the disk.
- ``interval`` (the default): commits skip the fsync (``MDB_NOSYNC``) and
  each server worker flushes the environment once a second.  A crashed
  process loses nothing (its commits are in the page cache); an
  operating-system crash or power loss loses at most the last second.
- ``nosync``: commits skip the fsync and only the kernel's own write-back
  flushes them (about 30 s on Linux).

LMDB keeps the database consistent in all three: a lost commit is undone
whole.  A lost grant counts as never issued (completing it answers
NOT_FOUND) and its seat and quota units come back, which can let the
account exceed a limit by what the lost second held.
"""

import json
import os
import struct
import threading

from jitauth._core import Environment, StoreError

DATABASES = ("meta", "revisions", "sources", "licenses", "grants", "seats",
             "expiries", "usage", "account_grants", "requests", "audit",
             "shadow")
REVISION_KEY = b"revision"

# XXX: the map size bounds the whole store (32 GiB of address space, not
# of disk: the file grows as data arrives).  Raise it with JITAUTH_MAP_SIZE.
DEFAULT_MAP_SIZE = 32 << 30
DURABILITY = ("sync", "interval", "nosync")


def durability() -> str:
    """The durability chosen for this process (see the module docstring)."""
    choice = os.environ.get("JITAUTH_DURABILITY", "interval")
    if choice not in DURABILITY:
        raise ValueError("JITAUTH_DURABILITY must be one of %s, not %r"
                         % (", ".join(DURABILITY), choice))
    return choice

_U64 = struct.Struct(">Q")


def revision_key(revision: int) -> bytes:
    return _U64.pack(revision)


# LMDB allows one open handle per environment and process: closing a second
# one clears the reader slots of the first.  Stores of one process on the
# same directory therefore share one Environment, counted by its users.
_OPEN: dict = {}
_OPEN_LOCK = threading.Lock()


def _acquire(data_dir: str, readonly: bool) -> Environment:
    key = (os.getpid(), os.path.realpath(data_dir))
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is None or entry[0].closed:
            map_size = int(os.environ.get("JITAUTH_MAP_SIZE",
                                          DEFAULT_MAP_SIZE))
            env = Environment(data_dir, DATABASES, map_size=map_size,
                              sync=durability() == "sync",
                              readonly=readonly)
            entry = _OPEN[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release(env: Environment) -> None:
    key = (os.getpid(), os.path.realpath(env.path))
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is None or entry[0] is not env:
            env.close()
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _OPEN[key]
            env.close()


class Store:
    """One open LMDB environment and the handles of its sub-databases."""

    def __init__(self, data_dir: str, *, create: bool = False,
                 readonly: bool = False):
        if create:
            os.makedirs(data_dir, exist_ok=True)
        elif not os.path.exists(os.path.join(data_dir, "data.mdb")):
            raise StoreError("no jitauth data in %s (run jitauth load "
                             "first)" % data_dir)

        self.env = _acquire(data_dir, readonly)
        self.path = data_dir
        self.meta = self.env.dbs["meta"]
        self.revisions = self.env.dbs["revisions"]
        self.sources = self.env.dbs["sources"]
        self.licenses = self.env.dbs["licenses"]
        self.grants = self.env.dbs["grants"]
        self.seats = self.env.dbs["seats"]
        self.expiries = self.env.dbs["expiries"]
        self.usage = self.env.dbs["usage"]
        self.account_grants = self.env.dbs["account_grants"]
        self.requests = self.env.dbs["requests"]
        self.audit = self.env.dbs["audit"]
        self.shadow = self.env.dbs["shadow"]
        # jitauth.audit.Recorder writing this store's audit trail, if any
        self.recorder = None

    def close(self) -> None:
        if self.env is not None:
            _release(self.env)
            self.env = None

    def current_revision(self, txn) -> int:
        raw = txn.get(self.meta, REVISION_KEY)
        return _U64.unpack(raw)[0] if raw else 0

    def read_policy(self, txn, revision: int) -> dict:
        raw = txn.get(self.revisions, revision_key(revision))
        if raw is None:
            raise StoreError("revision %d is missing from the store"
                             % revision)
        return json.loads(raw)

    def revision_info(self, txn, revision: int) -> dict:
        raw = txn.get(self.sources, revision_key(revision))
        return json.loads(raw) if raw else {}
