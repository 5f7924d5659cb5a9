# Declarations of the liblmdb C API used by jitauth (see /usr/include/lmdb.h).

from libc.stddef cimport size_t


cdef extern from "lmdb.h" nogil:
    ctypedef struct MDB_env:
        pass
    ctypedef struct MDB_txn:
        pass
    ctypedef struct MDB_cursor:
        pass
    ctypedef unsigned int MDB_dbi

    ctypedef struct MDB_val:
        size_t mv_size
        void *mv_data

    ctypedef struct MDB_envinfo:
        size_t me_last_txnid

    ctypedef enum MDB_cursor_op:
        MDB_FIRST
        MDB_NEXT
        MDB_SET_RANGE
        MDB_LAST
        MDB_PREV

    enum:
        MDB_NOSUBDIR
        MDB_RDONLY
        MDB_NOSYNC
        MDB_NOMETASYNC
        MDB_NOTLS
        MDB_CREATE
        MDB_NOTFOUND
        MDB_MAP_FULL
        MDB_READERS_FULL
        MDB_SUCCESS

    char *mdb_strerror(int err)
    int mdb_env_create(MDB_env **env)
    int mdb_env_open(MDB_env *env, const char *path, unsigned int flags,
                     unsigned int mode)
    void mdb_env_close(MDB_env *env)
    int mdb_env_set_mapsize(MDB_env *env, size_t size)
    int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs)
    int mdb_env_set_maxreaders(MDB_env *env, unsigned int readers)
    int mdb_env_sync(MDB_env *env, int force)
    int mdb_reader_check(MDB_env *env, int *dead)
    int mdb_env_info(MDB_env *env, MDB_envinfo *stat)

    int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags,
                      MDB_txn **txn)
    int mdb_txn_commit(MDB_txn *txn)
    void mdb_txn_abort(MDB_txn *txn)
    void mdb_txn_reset(MDB_txn *txn)
    int mdb_txn_renew(MDB_txn *txn)
    size_t mdb_txn_id(MDB_txn *txn)

    int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags,
                     MDB_dbi *dbi)
    int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data,
                unsigned int flags)
    int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_drop(MDB_txn *txn, MDB_dbi dbi, int delete_)

    int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
    void mdb_cursor_close(MDB_cursor *cursor)
    int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data,
                       MDB_cursor_op op)
    int mdb_cursor_del(MDB_cursor *cursor, unsigned int flags)
