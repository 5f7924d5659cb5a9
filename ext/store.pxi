# The LMDB binding: one environment per process, opened after fork.
#
# jitauth links the system liblmdb and opens every environment through this
# module only.  LMDB forbids opening the same environment twice in one
# process (closing either handle drops the other's file locks), so the store,
# the CLI and both matchers share one ``Environment`` object.

from libc.string cimport memcmp
from posix.unistd cimport getpid

from lmdb cimport *


class StoreError(Exception):
    """LMDB refused an operation; the message carries LMDB's own text."""


class StoreFull(StoreError):
    """The environment reached its map size; nothing of the write was kept."""


cdef int _check(int rc, str what) except -1:
    if rc == MDB_SUCCESS:
        return 0
    message = "%s: %s" % (what, mdb_strerror(rc).decode("utf-8", "replace"))
    if rc == MDB_MAP_FULL:
        raise StoreFull(message)
    raise StoreError(message)


cdef inline MDB_val _val(const unsigned char[:] data):
    cdef MDB_val v
    v.mv_size = data.shape[0]
    v.mv_data = <void *>&data[0] if data.shape[0] else NULL
    return v


cdef inline bytes _bytes(MDB_val v):
    return (<char *>v.mv_data)[:v.mv_size]


cdef class Environment:
    """An LMDB environment (a directory holding ``data.mdb``/``lock.mdb``).

    ``dbs`` names the sub-databases; a writable environment creates the
    missing ones.  ``sync=False`` skips the fsync at commit: a process crash
    loses nothing, an operating-system crash may lose the last commits.
    """

    cdef MDB_env *env
    cdef MDB_txn *_reader
    cdef bint _reader_open
    cdef readonly str path
    cdef readonly bint readonly
    cdef readonly dict dbs
    cdef int _pid

    def __cinit__(self):
        self.env = NULL
        self._reader = NULL
        self._reader_open = False

    def __init__(self, str path, dbs, *, size_t map_size=1 << 35,
                 unsigned int max_readers=1024, bint sync=True,
                 bint readonly=False):
        cdef unsigned int flags = MDB_NOTLS
        cdef MDB_txn *txn
        cdef MDB_dbi dbi
        cdef bytes bpath = path.encode()

        if readonly:
            flags |= MDB_RDONLY
        if not sync:
            flags |= MDB_NOSYNC

        _check(mdb_env_create(&self.env), "mdb_env_create")
        _check(mdb_env_set_mapsize(self.env, map_size), "set map size")
        _check(mdb_env_set_maxdbs(self.env, 32), "set max dbs")
        _check(mdb_env_set_maxreaders(self.env, max_readers), "set readers")
        rc = mdb_env_open(self.env, bpath, flags, 0o644)
        if rc != MDB_SUCCESS:
            mdb_env_close(self.env)
            self.env = NULL
            _check(rc, "open %s" % path)

        self.path = path
        self.readonly = readonly
        self._pid = getpid()

        # Handles opened in a transaction become visible to the whole
        # environment only once that transaction commits, so open them all
        # here, in one transaction, before anyone reads.
        self.dbs = {}
        with nogil:
            rc = mdb_txn_begin(self.env, NULL, flags & MDB_RDONLY, &txn)
        _check(rc, "begin")
        try:
            for name in dbs:
                rc = mdb_dbi_open(txn, name.encode(),
                                  0 if readonly else MDB_CREATE, &dbi)
                _check(rc, "open database %r" % name)
                self.dbs[name] = dbi
        except BaseException:
            mdb_txn_abort(txn)
            self.close()
            raise
        with nogil:
            rc = mdb_txn_commit(txn)
        _check(rc, "commit")

    def __dealloc__(self):
        self._close()

    cdef void _close(self):
        if self._reader != NULL:
            mdb_txn_abort(self._reader)
            self._reader = NULL
        if self.env != NULL:
            mdb_env_close(self.env)
            self.env = NULL

    def close(self):
        """Close the environment; transactions still open become invalid."""
        self._close()

    @property
    def closed(self):
        return self.env == NULL

    cdef int _usable(self) except -1:
        if self.env == NULL:
            raise StoreError("environment %s is closed" % self.path)
        if getpid() != self._pid:
            raise StoreError("environment %s was opened before fork; open "
                             "it again in this process" % self.path)
        return 0

    def begin(self, *, bint write=False):
        """Start a transaction; use it as a context manager.

        A write transaction waits for LMDB's writer lock, which is shared by
        every process on the environment; the GIL is released while waiting.
        """
        self._usable()
        if write and self.readonly:
            raise StoreError("environment %s is read-only" % self.path)
        return Transaction._begin(self, write)

    def sync(self, bint force=True):
        self._usable()
        with nogil:
            rc = mdb_env_sync(self.env, force)
        _check(rc, "sync")

    def reader_check(self):
        """Clear reader slots left by dead processes; return how many."""
        cdef int dead = 0
        self._usable()
        _check(mdb_reader_check(self.env, &dead), "reader check")
        return dead

    # The hot path reads through one reusable transaction.  It is only used
    # while holding the GIL and never across a release of it, so threads
    # cannot interleave on it.  Between decisions it stays open on its
    # snapshot: the next decision reuses it when nothing was committed
    # since (one read of the meta page), and renews it otherwise.  The
    # server's upkeep resets it about once a second (``release_reader``), so
    # an idle worker never pins old pages for long.
    cdef MDB_txn *read_begin(self) except NULL:
        cdef MDB_envinfo info
        cdef int rc
        if self.env == NULL:
            raise StoreError("environment %s is closed" % self.path)
        if self._reader == NULL:
            rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, &self._reader)
            if rc != MDB_SUCCESS:
                self._reader = NULL
                _check(rc, "begin read")
            self._reader_open = True
            return self._reader

        if self._reader_open:
            mdb_env_info(self.env, &info)
            if info.me_last_txnid == mdb_txn_id(self._reader):
                return self._reader
            mdb_txn_reset(self._reader)
            self._reader_open = False
        _check(mdb_txn_renew(self._reader), "renew read")
        self._reader_open = True
        return self._reader

    cdef void read_end(self) noexcept:
        pass  # the snapshot stays open for the next decision; see above

    def release_reader(self):
        """End the hot path's read snapshot (renewed at the next read)."""
        if self._reader != NULL and self._reader_open:
            mdb_txn_reset(self._reader)
            self._reader_open = False


cdef class Transaction:
    """A read or write transaction; values come back as ``bytes`` copies."""

    cdef MDB_txn *txn
    cdef Environment env
    cdef readonly bint write

    def __cinit__(self):
        self.txn = NULL

    @staticmethod
    cdef Transaction _begin(Environment env, bint write):
        cdef Transaction self = Transaction.__new__(Transaction)
        cdef unsigned int flags = 0 if write else MDB_RDONLY
        cdef MDB_txn *txn
        cdef int rc
        with nogil:
            rc = mdb_txn_begin(env.env, NULL, flags, &txn)
        _check(rc, "begin")
        self.txn = txn
        self.env = env
        self.write = write
        return self

    def __dealloc__(self):
        if self.txn != NULL:
            mdb_txn_abort(self.txn)
            self.txn = NULL

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.txn == NULL:
            return False
        if exc_type is None and self.write:
            self.commit()
        else:
            self.abort()
        return False

    cdef int _live(self) except -1:
        if self.txn == NULL:
            raise StoreError("transaction already ended")
        return 0

    def commit(self):
        cdef MDB_txn *txn = self.txn
        cdef int rc
        self._live()
        self.txn = NULL
        with nogil:
            rc = mdb_txn_commit(txn)
        _check(rc, "commit")

    def abort(self):
        if self.txn != NULL:
            mdb_txn_abort(self.txn)
            self.txn = NULL

    def get(self, unsigned int dbi, const unsigned char[:] key):
        """Return the value stored under ``key``, or None."""
        cdef MDB_val k = _val(key)
        cdef MDB_val v
        self._live()
        rc = mdb_get(self.txn, dbi, &k, &v)
        if rc == MDB_NOTFOUND:
            return None
        _check(rc, "get")
        return _bytes(v)

    def put(self, unsigned int dbi, const unsigned char[:] key,
            const unsigned char[:] value):
        cdef MDB_val k = _val(key)
        cdef MDB_val v = _val(value)
        self._live()
        _check(mdb_put(self.txn, dbi, &k, &v, 0), "put")

    def delete(self, unsigned int dbi, const unsigned char[:] key):
        """Delete ``key``; return whether it existed."""
        cdef MDB_val k = _val(key)
        self._live()
        rc = mdb_del(self.txn, dbi, &k, NULL)
        if rc == MDB_NOTFOUND:
            return False
        _check(rc, "delete")
        return True

    def clear(self, unsigned int dbi):
        """Remove every record of one database."""
        self._live()
        _check(mdb_drop(self.txn, dbi, 0), "drop")

    def items(self, unsigned int dbi, bytes prefix=b"", Py_ssize_t limit=-1,
              bint reverse=False):
        """Return ``(key, value)`` pairs whose key starts with ``prefix``.

        Keys come in byte order (reversed with ``reverse``); ``limit`` caps
        how many are returned (-1: no cap).
        """
        cdef MDB_cursor *cur
        cdef MDB_val k, v
        cdef list out = []
        cdef Py_ssize_t plen = len(prefix)
        cdef const char *p = prefix
        cdef int rc
        cdef bytes upper

        self._live()
        _check(mdb_cursor_open(self.txn, dbi, &cur), "cursor")
        try:
            if not reverse:
                k.mv_size = plen
                k.mv_data = <void *>p
                rc = mdb_cursor_get(cur, &k, &v,
                                    MDB_SET_RANGE if plen else MDB_FIRST)
            else:
                upper = _successor(prefix)
                if upper is None:
                    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST)
                else:
                    k.mv_size = len(upper)
                    k.mv_data = <void *><const char *>upper
                    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
                    if rc == MDB_NOTFOUND:
                        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST)
                    elif rc == MDB_SUCCESS:
                        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)
            while rc == MDB_SUCCESS and limit != 0:
                if k.mv_size < <size_t>plen or (
                        plen and memcmp(k.mv_data, p, plen) != 0):
                    if reverse and k.mv_size >= <size_t>plen and memcmp(
                            k.mv_data, p, plen) > 0:
                        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV)
                        continue
                    break
                out.append((_bytes(k), _bytes(v)))
                limit -= 1
                rc = mdb_cursor_get(cur, &k, &v,
                                    MDB_PREV if reverse else MDB_NEXT)
            if rc != MDB_SUCCESS and rc != MDB_NOTFOUND:
                _check(rc, "cursor")
        finally:
            mdb_cursor_close(cur)
        return out


cdef object _successor(bytes prefix):
    """The smallest key greater than every key starting with ``prefix``."""
    cdef bytearray b = bytearray(prefix)
    cdef Py_ssize_t last
    while b:
        last = len(b) - 1
        if b[last] != 0xFF:
            b[last] += 1
            return bytes(b)
        del b[last]
    return None
