# The compiled rule matcher: docs/internals.md, decided without waste.
#
# ``Matcher`` compiles one revision of the policy once into typed objects:
# rules indexed by action pattern, literals encoded to UTF-8 up front,
# names of plans, entitlements, limits and roles turned into small numbers.
# A decision then reads the license record where it lies, compares bytes
# with memcmp and builds no Python object for a license field.
# ``jitauth/reference.py`` is its plain Python twin; the property tests hold
# the two to the same answers.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, \
    PyBuffer_Release
from cpython.dict cimport PyDict_GetItemWithError
from cpython.object cimport PyObject
from cpython.set cimport PySet_Contains
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memchr, memcpy, memset

import socket as _socket

from jitauth import clock as _clock
from jitauth.licenses import CorruptRecord
from jitauth.model import Reason as _Reason


cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "sys/socket.h" nogil:
    enum:
        AF_INET
        AF_INET6

cdef extern from "lmdb.h" nogil:
    enum:
        MDB_BAD_VALSIZE

cdef extern from "Python.h":
    double PyOS_string_to_double(const char *s, char **endptr,
                                 PyObject *overflow_exception) except? -1.0
    int PyUnicode_READY(object o) except -1
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) \
        except NULL
    Py_ssize_t PY_SSIZE_T_MAX
    Py_ssize_t PyUnicode_Tailmatch(object s, object sub, Py_ssize_t start,
                                   Py_ssize_t end, int direction) except -1


cdef enum:
    # Reason numbers (jitauth.model.Reason); 0 is "stale revision".
    STALE = 0
    ALLOWED_BY_RULE = 1
    NO_LICENSE = 2
    LICENSE_INACTIVE = 3
    LICENSE_EXPIRED = 4
    LICENSE_NOT_YET_VALID = 5
    NOT_ENTITLED = 6
    DENIED_BY_RULE = 7
    NO_MATCHING_RULE = 8

cdef enum:
    STATUS_ACTIVE = 1
    HEADER_SIZE = 24
    MAX_NUMBER_CHARS = 32
    # No address that inet_pton accepts is longer than 45 characters.
    MAX_ADDRESS_CHARS = 63
    MINUTE_MS = 60000
    DAY_MS = 86400000
    THURSDAY = 3  # 1970-01-01, day 0, counting Monday as 0
    # Scratch space of a decision lives on the stack up to these sizes.
    STACK_ROLE_WORDS = 16
    STACK_ZONES = 16
    STACK_RECORD = 1024
    # XXX: the candidate lists per action and resource type are dropped
    # all at once when they grow past these counts (lists, rule slots).
    MAX_CACHED_LISTS = 16384
    MAX_CACHED_RULES = 1 << 22

cdef enum:
    # Where a condition's attribute comes from.
    SRC_NONE
    SRC_CONTEXT
    SRC_SUBJECT
    SRC_RESOURCE
    SRC_LICENSE
    SRC_SUBJECT_ID
    SRC_RESOURCE_ID
    SRC_RESOURCE_TYPE
    SRC_LICENSE_PLAN
    SRC_ACCOUNT_ID

cdef enum:
    OP_EQ = 1
    OP_NE
    OP_IN
    OP_NOT_IN
    OP_GT
    OP_GTE
    OP_LT
    OP_LTE
    OP_CIDR
    OP_TIME

_OPS = {"eq": OP_EQ, "ne": OP_NE, "in": OP_IN, "not_in": OP_NOT_IN,
        "gt": OP_GT, "gte": OP_GTE, "lt": OP_LT, "lte": OP_LTE,
        "cidr": OP_CIDR, "time": OP_TIME}
_SOURCES = {"context": SRC_CONTEXT, "subject": SRC_SUBJECT,
            "resource": SRC_RESOURCE, "license": SRC_LICENSE}
_SPECIAL_SOURCES = {"subject.id": SRC_SUBJECT_ID,
                    "resource.id": SRC_RESOURCE_ID,
                    "resource.type": SRC_RESOURCE_TYPE,
                    "license.plan": SRC_LICENSE_PLAN,
                    "account.id": SRC_ACCOUNT_ID}
_REASONS = [None] + [_Reason(i) for i in range(1, 10)]


cdef inline bytes _encode(str text):
    return text.encode("utf-8", "surrogatepass")


# --- the license record, read in place ---------------------------------------

cdef struct _Record:
    const unsigned char *base
    int status
    int64_t valid_from
    int64_t valid_until
    const unsigned char *plan
    size_t plan_len
    unsigned int n_entitlements
    unsigned int n_limits
    unsigned int n_attributes
    size_t entitlements_at
    size_t limits_at
    size_t attributes_at


cdef inline unsigned int _u16(const unsigned char *p) noexcept nogil:
    return p[0] | (<unsigned int>p[1] << 8)


cdef inline int64_t _i64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(7, -1, -1):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef inline int _skip_str(const unsigned char *p, size_t size,
                          size_t *pos) noexcept nogil:
    cdef size_t n
    if size - pos[0] < 2:
        return -1
    n = _u16(p + pos[0])
    if size - pos[0] - 2 < n:
        return -1
    pos[0] += 2 + n
    return 0


cdef int _read_record(const unsigned char *p, size_t size,
                      _Record *r) noexcept nogil:
    """Check the record's layout and note where its sections start.

    Returns 0, -1 (truncated) or -2 (another format version).  The whole
    record is walked so that corruption is found whatever rules apply.
    """
    cdef size_t pos = HEADER_SIZE
    cdef unsigned int i

    if size < HEADER_SIZE:
        return -1
    if p[0] != 1:
        return -2
    r.base = p
    r.status = p[1]
    r.n_entitlements = _u16(p + 2)
    r.n_limits = _u16(p + 4)
    r.n_attributes = _u16(p + 6)
    r.valid_from = _i64(p + 8)
    r.valid_until = _i64(p + 16)

    if _skip_str(p, size, &pos):
        return -1
    r.plan = p + HEADER_SIZE + 2
    r.plan_len = pos - HEADER_SIZE - 2

    r.entitlements_at = pos
    for i in range(r.n_entitlements):
        if _skip_str(p, size, &pos):
            return -1
    r.limits_at = pos
    for i in range(r.n_limits):
        if _skip_str(p, size, &pos) or size - pos < 8:
            return -1
        pos += 8
    r.attributes_at = pos
    for i in range(r.n_attributes):
        if _skip_str(p, size, &pos) or _skip_str(p, size, &pos):
            return -1
    return 0


cdef inline bint _same(const unsigned char *p, size_t n,
                       const unsigned char *q, size_t m) noexcept nogil:
    return n == m and memcmp(p, q, n) == 0


cdef inline bint _same_bytes(const unsigned char *p, size_t n,
                             bytes text) noexcept:
    return _same(p, n, <const unsigned char *>PyBytes_AS_STRING(text),
                 PyBytes_GET_SIZE(text))


cdef bint _has_entitlement(const _Record *r, const unsigned char *name,
                           size_t size) noexcept nogil:
    cdef size_t pos = r.entitlements_at
    cdef size_t n
    cdef unsigned int i
    for i in range(r.n_entitlements):
        n = _u16(r.base + pos)
        if _same(r.base + pos + 2, n, name, size):
            return True
        pos += 2 + n
    return False


cdef bint _own_limit(const _Record *r, const unsigned char *name,
                     size_t size, int64_t *value) noexcept nogil:
    cdef size_t pos = r.limits_at
    cdef size_t n
    cdef unsigned int i
    for i in range(r.n_limits):
        n = _u16(r.base + pos)
        if _same(r.base + pos + 2, n, name, size):
            value[0] = _i64(r.base + pos + 2 + n)
            return True
        pos += 2 + n + 8
    return False


cdef bint _attribute(const _Record *r, const unsigned char *key,
                     size_t size, const unsigned char **value,
                     size_t *value_size) noexcept nogil:
    cdef size_t pos = r.attributes_at
    cdef size_t n
    cdef unsigned int i
    cdef bint found
    for i in range(r.n_attributes):
        n = _u16(r.base + pos)
        found = _same(r.base + pos + 2, n, key, size)
        pos += 2 + n
        n = _u16(r.base + pos)
        if found:
            value[0] = r.base + pos + 2
            value_size[0] = n
            return True
        pos += 2 + n
    return False


cdef inline uint64_t _fnv1a(const unsigned char *p, size_t n) noexcept:
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h


# --- attribute values --------------------------------------------------------

cdef bint _decimal(const char *p, Py_ssize_t n, double *out) except -1:
    """Parse ``-?[0-9]+(\\.[0-9]+)?`` of at most 32 characters."""
    cdef char text[MAX_NUMBER_CHARS + 1]
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t start

    if n <= 0 or n > MAX_NUMBER_CHARS:
        return False
    if p[0] == b'-':
        i = 1
    start = i
    while i < n and b'0' <= p[i] <= b'9':
        i += 1
    if i == start:
        return False
    if i < n:
        if p[i] != b'.':
            return False
        i += 1
        start = i
        while i < n and b'0' <= p[i] <= b'9':
            i += 1
        if i == start or i != n:
            return False

    # Python's own correctly rounded conversion, as float() does; unlike
    # strtod it ignores the C locale.
    memcpy(text, p, n)
    text[n] = 0
    out[0] = PyOS_string_to_double(text, NULL, NULL)
    return True


cdef struct _Network:
    int size
    int bits
    unsigned char address[16]


cdef bint _in_networks(const char *p, Py_ssize_t n, const _Network *nets,
                       int count) noexcept:
    cdef char text[MAX_ADDRESS_CHARS + 1]
    cdef unsigned char address[16]
    cdef int size, i, full, rest
    cdef unsigned char mask

    if n > MAX_ADDRESS_CHARS or memchr(p, 0, n) != NULL:
        return False
    memcpy(text, p, n)
    text[n] = 0
    if inet_pton(AF_INET, text, address) == 1:
        size = 4
    elif inet_pton(AF_INET6, text, address) == 1:
        size = 16
    else:
        return False

    for i in range(count):
        if nets[i].size != size:
            continue
        full = nets[i].bits >> 3
        rest = nets[i].bits & 7
        if memcmp(address, nets[i].address, full) != 0:
            continue
        if rest:
            mask = <unsigned char>(0xFF << (8 - rest))
            if (address[full] ^ nets[i].address[full]) & mask:
                continue
        return True
    return False


cdef inline int64_t _floor_div(int64_t a, int64_t b) noexcept:
    cdef int64_t q = a / b
    if (a % b) < 0:
        q -= 1
    return q


# --- compiled policy ---------------------------------------------------------
#
# Each rule and condition is compiled into a Python object that owns its
# values (_Rule, _Condition) and mirrored into a C struct (_Hot, _Cond) that
# borrows them.  The structs sit in two contiguous arrays, so a decision
# walks a few cache lines per rule instead of a web of Python objects.

cdef struct _Cond:
    int op
    int source
    PyObject *key                   # str: key in a request map
    const unsigned char *key_utf8   # the key, for license attributes
    size_t key_len
    PyObject *text                  # str: eq, ne
    const unsigned char *text_utf8
    size_t text_len
    PyObject *texts                 # frozenset of str: in, not_in
    PyObject *texts_utf8            # tuple of bytes: in, not_in
    double number
    const _Network *networks
    int n_networks
    int start, end, days, tz


cdef struct _Hot:
    bint deny
    bint any_id
    int n_roles
    const int *roles                # role numbers; none: any subject
    PyObject *exact_ids             # frozenset of str, NULL if none
    PyObject *id_prefixes           # tuple of str
    const unsigned char *entitlement    # NULL: none needed
    size_t entitlement_len
    Py_ssize_t entitlement_no
    const unsigned char *limit      # NULL: no limit
    size_t limit_len
    Py_ssize_t limit_no
    Py_ssize_t first_condition
    Py_ssize_t n_conditions


cdef inline const unsigned char *_chars(bytes b) noexcept:
    return <const unsigned char *>PyBytes_AS_STRING(b)


cdef class _Condition:
    cdef int op
    cdef int source
    cdef str key
    cdef bytes key_utf8
    cdef str text
    cdef bytes text_utf8
    cdef frozenset texts
    cdef tuple texts_utf8
    cdef double number
    cdef _Network *networks
    cdef int n_networks
    cdef int start, end, days, tz

    def __dealloc__(self):
        free(self.networks)

    cdef void mirror(self, _Cond *c) noexcept:
        c.op = self.op
        c.source = self.source
        c.key = <PyObject *>self.key
        c.key_utf8 = NULL
        c.text = NULL
        c.text_utf8 = NULL
        c.texts = NULL
        c.texts_utf8 = NULL
        if self.key_utf8 is not None:
            c.key_utf8 = _chars(self.key_utf8)
            c.key_len = len(self.key_utf8)
        if self.text is not None:
            c.text = <PyObject *>self.text
            c.text_utf8 = _chars(self.text_utf8)
            c.text_len = len(self.text_utf8)
        if self.texts is not None:
            c.texts = <PyObject *>self.texts
            c.texts_utf8 = <PyObject *>self.texts_utf8
        c.number = self.number
        c.networks = self.networks
        c.n_networks = self.n_networks
        c.start = self.start
        c.end = self.end
        c.days = self.days
        c.tz = self.tz

    cdef _compile(self, dict spec, Py_ssize_t n_zones, dict shared):
        cdef str source, key
        cdef Py_ssize_t i

        self.op = _OPS[spec["op"]]
        if self.op == OP_TIME:
            self.start = spec["from"]
            self.end = spec["to"]
            self.days = spec["days"]
            self.tz = spec["tz"]
            if not 0 <= self.tz < n_zones:
                raise ValueError("time condition names zone %d of %d"
                                 % (self.tz, n_zones))
            return

        attr = spec["attr"]
        source, _, key = attr.partition(".")
        self.source = _SPECIAL_SOURCES.get(attr,
                                           _SOURCES.get(source, SRC_NONE))
        # Equal keys and literals share one object, which stays in cache.
        self.key = shared.setdefault(key, key)
        self.key_utf8 = _encode(key)
        value = spec["value"]
        if self.op in (OP_EQ, OP_NE):
            self.text = shared.setdefault(value, value)
            self.text_utf8 = _encode(value)
        elif self.op in (OP_IN, OP_NOT_IN):
            texts = frozenset(value)
            self.texts = shared.setdefault(texts, texts)
            self.texts_utf8 = tuple(_encode(v) for v in value)
        elif self.op == OP_CIDR:
            self.networks = <_Network *>calloc(max(len(value), 1),
                                               sizeof(_Network))
            if self.networks == NULL:
                raise MemoryError()
            for i, network in enumerate(value):
                self._network(i, network)
            self.n_networks = len(value)
        else:
            self.number = float(value)

    cdef _network(self, Py_ssize_t i, str network):
        cdef bytes packed
        address, _, bits = network.partition("/")
        family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
        packed = _socket.inet_pton(family, address)
        size = len(packed)
        prefix = int(bits) if bits else size * 8
        if not 0 <= prefix <= size * 8:
            raise ValueError("network %r: prefix out of range" % network)
        self.networks[i].size = size
        self.networks[i].bits = prefix
        memcpy(self.networks[i].address, PyBytes_AS_STRING(packed), size)


cdef class _Rule:
    cdef Py_ssize_t index
    cdef str id
    cdef str effect
    cdef bint deny
    cdef tuple types            # None: any type
    cdef bint any_id
    cdef frozenset exact_ids
    cdef tuple id_prefixes
    cdef int *roles             # role numbers; none: any subject
    cdef int n_roles
    cdef bytes entitlement      # None: no entitlement needed
    cdef Py_ssize_t entitlement_no
    cdef tuple conditions
    cdef int64_t ttl_ms
    cdef str limit
    cdef bytes limit_utf8
    cdef Py_ssize_t limit_no

    def __dealloc__(self):
        free(self.roles)

    cdef void mirror(self, _Hot *h, Py_ssize_t first_condition) noexcept:
        h.deny = self.deny
        h.any_id = self.any_id
        h.n_roles = self.n_roles
        h.roles = self.roles
        h.exact_ids = (<PyObject *>self.exact_ids if self.exact_ids
                       else NULL)
        h.id_prefixes = <PyObject *>self.id_prefixes
        h.entitlement = NULL
        if self.entitlement is not None:
            h.entitlement = _chars(self.entitlement)
            h.entitlement_len = len(self.entitlement)
        h.entitlement_no = self.entitlement_no
        h.limit = NULL
        if self.limit_utf8 is not None:
            h.limit = _chars(self.limit_utf8)
            h.limit_len = len(self.limit_utf8)
        h.limit_no = self.limit_no
        h.first_condition = first_condition
        h.n_conditions = len(self.conditions)


cdef class _Candidates:
    """The rules an action can match, in file order.

    An action's list keeps, per resource type seen, the shorter list of its
    rules that match that type too: the one a decision walks.
    """

    cdef list rules
    cdef int *indexes
    cdef Py_ssize_t n
    cdef Py_ssize_t last_deny   # position of the last deny rule, or -1
    cdef dict by_type

    def __dealloc__(self):
        free(self.indexes)

    @staticmethod
    cdef _Candidates of(list rules):
        cdef _Candidates self = _Candidates.__new__(_Candidates)
        cdef _Rule rule
        cdef Py_ssize_t i
        self.rules = rules
        self.n = len(rules)
        self.indexes = <int *>malloc((self.n + 1) * sizeof(int))
        if self.indexes == NULL:
            raise MemoryError()
        self.last_deny = -1
        for i in range(self.n):
            rule = rules[i]
            self.indexes[i] = rule.index
            if rule.deny:
                self.last_deny = i
        self.by_type = {}
        return self


cdef struct _Ask:
    # Borrowed references to the request: the caller's arguments.
    PyObject *account_id
    PyObject *subject_id
    PyObject *roles
    PyObject *subject_attributes
    PyObject *action
    PyObject *resource_type
    PyObject *resource_id
    PyObject *resource_attributes
    PyObject *context
    PyObject *tz_given
    int64_t now_ms
    _Record record
    Py_ssize_t plan             # -2: not looked up yet; -1: not in policy
    bint roles_ready
    uint64_t *role_bits
    bint zones_ready
    int64_t *zone_offsets


cdef object _lookup(object mapping, str key):
    cdef PyObject *value
    if mapping is None:
        return None
    if type(mapping) is dict:
        value = PyDict_GetItemWithError(mapping, key)
        return <object>value if value != NULL else None
    return mapping.get(key)


cdef class Matcher:
    """Decide requests against one revision of the compiled policy.

    ``policy`` is the canonical JSON of docs/internals.md, already parsed;
    ``revision`` is the number it is stored under.  Answers are the same as
    ``jitauth.reference.ReferenceMatcher``'s, several times faster.
    """

    cdef readonly object revision
    cdef readonly list rule_ids
    cdef readonly list timezones
    cdef readonly bint has_time_conditions
    cdef uint64_t _revision
    # The snapshot (environment and transaction id) last seen holding this
    # matcher's revision; NULL: none yet.
    cdef void *_checked_env
    cdef size_t _checked_txnid
    cdef list _rules
    cdef _Hot *_hot
    cdef _Cond *_conds
    cdef dict _shared
    cdef dict _exact
    cdef dict _prefixes
    cdef list _star
    cdef dict _by_action
    cdef Py_ssize_t _cached_lists
    cdef Py_ssize_t _cached_rules
    cdef dict _role_numbers
    cdef Py_ssize_t _role_words
    cdef Py_ssize_t _n_zones
    # Plans: names by number, an open-addressed table from name hash to
    # number, and per plan which entitlements and limits it has.
    cdef list _plan_names
    cdef uint64_t *_plan_hashes
    cdef Py_ssize_t *_plan_slots
    cdef uint64_t _plan_mask
    cdef Py_ssize_t _n_entitlements
    cdef unsigned char *_plan_entitlements
    cdef Py_ssize_t _n_limits
    cdef unsigned char *_plan_has_limit
    cdef int64_t *_plan_limits
    cdef tuple _no_license
    cdef tuple _inactive
    cdef tuple _expired
    cdef tuple _not_yet_valid
    cdef tuple _no_matching_rule
    cdef tuple _stale

    def __cinit__(self):
        self._hot = NULL
        self._conds = NULL
        self._plan_hashes = NULL
        self._plan_slots = NULL
        self._plan_entitlements = NULL
        self._plan_has_limit = NULL
        self._plan_limits = NULL

    def __dealloc__(self):
        free(self._hot)
        free(self._conds)
        free(self._plan_hashes)
        free(self._plan_slots)
        free(self._plan_entitlements)
        free(self._plan_has_limit)
        free(self._plan_limits)

    def __init__(self, dict policy not None, revision):
        cdef dict entitlements = {}
        cdef dict limits = {}

        if policy.get("format") != 1:
            raise ValueError("compiled policy format %r is not 1"
                             % policy.get("format"))
        self.revision = revision
        self._revision = revision
        self.timezones = list(policy.get("timezones", ()))
        self._n_zones = len(self.timezones)
        self._role_numbers = {}
        self._shared = {}
        self._rules = []
        for index, spec in enumerate(policy["rules"]):
            self._rules.append(self._compile_rule(index, spec, entitlements,
                                                  limits))
        self._role_words = (len(self._role_numbers) + 63) // 64
        self._mirror()
        self.rule_ids = [(<_Rule>rule).id for rule in self._rules]
        self.has_time_conditions = any(
            (<_Condition>c).op == OP_TIME
            for rule in self._rules for c in (<_Rule>rule).conditions)

        self._index_actions(policy["rules"])
        self._compile_plans(policy.get("plans", {}), entitlements, limits)

        self._no_license = (_REASONS[NO_LICENSE], -1, -1)
        self._inactive = (_REASONS[LICENSE_INACTIVE], -1, -1)
        self._expired = (_REASONS[LICENSE_EXPIRED], -1, -1)
        self._not_yet_valid = (_REASONS[LICENSE_NOT_YET_VALID], -1, -1)
        self._no_matching_rule = (_REASONS[NO_MATCHING_RULE], -1, -1)
        self._stale = (STALE, -1, -1)

    cdef _Rule _compile_rule(self, Py_ssize_t index, dict spec,
                             dict entitlements, dict limits):
        cdef _Rule rule = _Rule.__new__(_Rule)
        cdef _Condition condition
        cdef Py_ssize_t i

        rule.index = index
        rule.id = spec["id"]
        rule.effect = spec["effect"]
        if rule.effect not in ("allow", "deny"):
            raise ValueError("rule %r: effect %r" % (rule.id, rule.effect))
        rule.deny = rule.effect == "deny"

        types = list(spec["resource_types"])
        rule.types = None if "*" in types else tuple(types)
        ids = list(spec["resource_ids"])
        rule.id_prefixes = tuple(
            self._shared.setdefault(p[:len(p) - 1], p[:len(p) - 1])
            for p in ids if p.endswith("*"))
        rule.exact_ids = frozenset(p for p in ids if not p.endswith("*"))
        rule.any_id = "" in rule.id_prefixes

        roles = list(spec.get("roles") or ())
        if roles:
            rule.roles = <int *>malloc(len(roles) * sizeof(int))
            if rule.roles == NULL:
                raise MemoryError()
            for i, role in enumerate(roles):
                rule.roles[i] = self._role_numbers.setdefault(
                    role, len(self._role_numbers))
            rule.n_roles = len(roles)

        rule.entitlement_no = -1
        if spec.get("entitlement") is not None:
            rule.entitlement = _encode(spec["entitlement"])
            rule.entitlement_no = entitlements.setdefault(
                spec["entitlement"], len(entitlements))

        conditions = []
        for c in spec.get("when") or ():
            condition = _Condition.__new__(_Condition)
            condition._compile(c, self._n_zones, self._shared)
            conditions.append(condition)
        rule.conditions = tuple(conditions)

        rule.ttl_ms = spec.get("ttl_ms", 0)
        rule.limit = spec.get("limit")
        rule.limit_no = -1
        if rule.limit is not None:
            rule.limit_utf8 = _encode(rule.limit)
            rule.limit_no = limits.setdefault(rule.limit, len(limits))
        return rule

    cdef _mirror(self):
        cdef Py_ssize_t n_conditions = 0
        cdef Py_ssize_t i, k = 0
        cdef _Rule rule

        for rule in self._rules:
            n_conditions += len(rule.conditions)
        self._hot = <_Hot *>calloc(len(self._rules) + 1, sizeof(_Hot))
        self._conds = <_Cond *>calloc(n_conditions + 1, sizeof(_Cond))
        if self._hot == NULL or self._conds == NULL:
            raise MemoryError()
        for i, rule in enumerate(self._rules):
            rule.mirror(&self._hot[i], k)
            for condition in rule.conditions:
                (<_Condition>condition).mirror(&self._conds[k])
                k += 1

    cdef _index_actions(self, list specs):
        self._exact = {}
        self._prefixes = {}
        self._star = []
        self._by_action = {}
        for index, spec in enumerate(specs):
            for pattern in spec["actions"]:
                if pattern == "*":
                    self._star.append(index)
                elif pattern.endswith(".*"):
                    prefix = pattern[:len(pattern) - 1]
                    self._prefixes.setdefault(prefix, []).append(index)
                else:
                    self._exact.setdefault(pattern, []).append(index)

    cdef _compile_plans(self, dict plans, dict entitlements, dict limits):
        cdef Py_ssize_t n = len(plans)
        cdef Py_ssize_t slots = 4
        cdef Py_ssize_t p, slot
        cdef uint64_t h
        cdef bytes name

        while slots < 2 * n:
            slots *= 2
        self._plan_mask = slots - 1
        self._plan_slots = <Py_ssize_t *>malloc(slots * sizeof(Py_ssize_t))
        self._plan_hashes = <uint64_t *>calloc(n + 1, sizeof(uint64_t))
        self._n_entitlements = len(entitlements)
        self._n_limits = len(limits)
        self._plan_entitlements = <unsigned char *>calloc(
            n * self._n_entitlements + 1, 1)
        self._plan_has_limit = <unsigned char *>calloc(
            n * self._n_limits + 1, 1)
        self._plan_limits = <int64_t *>calloc(n * self._n_limits + 1,
                                              sizeof(int64_t))
        if (self._plan_slots == NULL or self._plan_hashes == NULL
                or self._plan_entitlements == NULL
                or self._plan_has_limit == NULL
                or self._plan_limits == NULL):
            raise MemoryError()
        for slot in range(slots):
            self._plan_slots[slot] = -1

        self._plan_names = []
        for p, (plan_name, plan) in enumerate(plans.items()):
            name = _encode(plan_name)
            self._plan_names.append(name)
            h = _fnv1a(<const unsigned char *>PyBytes_AS_STRING(name),
                       len(name))
            self._plan_hashes[p] = h
            slot = h & self._plan_mask
            while self._plan_slots[slot] != -1:
                slot = (slot + 1) & self._plan_mask
            self._plan_slots[slot] = p

            for entitlement in plan.get("entitlements", ()):
                e = entitlements.get(entitlement)
                if e is not None:
                    self._plan_entitlements[
                        p * self._n_entitlements + e] = 1
            for limit, value in plan.get("limits", {}).items():
                k = limits.get(limit)
                if k is not None:
                    self._plan_has_limit[p * self._n_limits + k] = 1
                    self._plan_limits[p * self._n_limits + k] = value

    def rule_info(self, Py_ssize_t index):
        """``(id, effect, ttl_ms, limit)`` of the rule at ``index``."""
        cdef _Rule rule = self._rules[index]
        return rule.id, rule.effect, rule.ttl_ms, rule.limit

    # --- per request ---------------------------------------------------------

    cdef _Candidates _candidates(self, str action, str resource_type):
        cdef PyObject *hit = PyDict_GetItemWithError(self._by_action, action)
        cdef _Candidates found
        cdef Py_ssize_t dot

        if hit != NULL:
            found = <_Candidates>hit
        else:
            indexes = set(self._star)
            indexes.update(self._exact.get(action, ()))
            dot = action.find(".")
            while dot >= 0:
                indexes.update(self._prefixes.get(action[:dot + 1], ()))
                dot = action.find(".", dot + 1)
            found = _Candidates.of([self._rules[i] for i in sorted(indexes)])
            self._remember(found.n)
            self._by_action[action] = found

        hit = PyDict_GetItemWithError(found.by_type, resource_type)
        if hit != NULL:
            return <_Candidates>hit
        typed = _Candidates.of(
            [rule for rule in found.rules
             if (<_Rule>rule).types is None
             or resource_type in (<_Rule>rule).types])
        self._remember(typed.n)
        found.by_type[resource_type] = typed
        return typed

    cdef _remember(self, Py_ssize_t n):
        # Actions and types come from requests: bound what is kept.
        self._cached_lists += 1
        self._cached_rules += n
        if (self._cached_lists > MAX_CACHED_LISTS
                or self._cached_rules > MAX_CACHED_RULES):
            self._by_action.clear()
            self._cached_lists = 1
            self._cached_rules = n

    cdef Py_ssize_t _plan(self, _Ask *ask) noexcept:
        cdef const _Record *r = &ask.record
        cdef uint64_t h
        cdef Py_ssize_t slot, p

        if ask.plan != -2:
            return ask.plan
        h = _fnv1a(r.plan, r.plan_len)
        slot = h & self._plan_mask
        ask.plan = -1
        while self._plan_slots[slot] != -1:
            p = self._plan_slots[slot]
            if (self._plan_hashes[p] == h and _same_bytes(
                    r.plan, r.plan_len, self._plan_names[p])):
                ask.plan = p
                break
            slot = (slot + 1) & self._plan_mask
        return ask.plan

    cdef int _load_roles(self, _Ask *ask) except -1:
        cdef PyObject *number
        cdef Py_ssize_t i

        memset(ask.role_bits, 0, self._role_words * sizeof(uint64_t))
        if ask.roles != NULL:
            for role in <object>ask.roles:
                if not isinstance(role, str):
                    continue
                number = PyDict_GetItemWithError(self._role_numbers, role)
                if number != NULL:
                    i = <Py_ssize_t><object>number
                    ask.role_bits[i >> 6] |= (<uint64_t>1) << (i & 63)
        ask.roles_ready = True
        return 0

    cdef int _load_zones(self, _Ask *ask) except -1:
        cdef Py_ssize_t i

        if ask.tz_given != NULL:
            offsets = <object>ask.tz_given
        else:
            offsets = _clock.tz_offsets(self.timezones, ask.now_ms)
        for i in range(self._n_zones):
            ask.zone_offsets[i] = offsets[i]
        ask.zones_ready = True
        return 0

    cdef bint _targets(self, const _Hot *h, _Ask *ask) except -1:
        """Whether the resource id and the roles match (the action and the
        resource type do, for every rule of a candidate list)."""
        cdef int i, role

        if not h.any_id:
            resource_id = <object>ask.resource_id
            if not (h.exact_ids != NULL and PySet_Contains(
                    <object>h.exact_ids, resource_id) == 1):
                for prefix in <tuple>h.id_prefixes:
                    if PyUnicode_Tailmatch(resource_id, prefix, 0,
                                           PY_SSIZE_T_MAX, -1):
                        break
                else:
                    return False

        if h.n_roles:
            if not ask.roles_ready:
                self._load_roles(ask)
            for i in range(h.n_roles):
                role = h.roles[i]
                if ask.role_bits[role >> 6] >> (role & 63) & 1:
                    return True
            return False
        return True

    cdef bint _entitled(self, const _Hot *h, _Ask *ask) noexcept:
        cdef Py_ssize_t p
        if h.entitlement == NULL:
            return True
        if _has_entitlement(&ask.record, h.entitlement, h.entitlement_len):
            return True
        p = self._plan(ask)
        return p >= 0 and self._plan_entitlements[
            p * self._n_entitlements + h.entitlement_no]

    cdef int64_t _limit_max(self, const _Hot *h, _Ask *ask) noexcept:
        cdef int64_t value
        cdef Py_ssize_t p, k
        if h.limit == NULL:
            return -1
        if _own_limit(&ask.record, h.limit, h.limit_len, &value):
            return value
        p = self._plan(ask)
        k = p * self._n_limits + h.limit_no
        if p >= 0 and self._plan_has_limit[k]:
            return self._plan_limits[k]
        return 0

    cdef bint _in_window(self, const _Cond *c, _Ask *ask) except -1:
        cdef int64_t day, ms, shifted, minute, weekday

        if not ask.zones_ready:
            self._load_zones(ask)
        day = _floor_div(ask.now_ms, DAY_MS)
        ms = ask.now_ms - day * DAY_MS
        shifted = ms + ask.zone_offsets[c.tz] * MINUTE_MS
        day += _floor_div(shifted, DAY_MS)
        ms = shifted - _floor_div(shifted, DAY_MS) * DAY_MS
        weekday = (day + THURSDAY) - _floor_div(day + THURSDAY, 7) * 7
        minute = ms // MINUTE_MS

        if not (c.days >> weekday) & 1:
            return False
        if c.start <= c.end:
            return c.start <= minute < c.end
        return minute >= c.start or minute < c.end

    cdef bint _holds_bytes(self, const _Cond *c, const unsigned char *p,
                           size_t n) except -1:
        cdef double number
        cdef int op = c.op

        if op == OP_EQ:
            return _same(p, n, c.text_utf8, c.text_len)
        if op == OP_NE:
            return not _same(p, n, c.text_utf8, c.text_len)
        if op == OP_IN or op == OP_NOT_IN:
            for text in <tuple>c.texts_utf8:
                if _same_bytes(p, n, <bytes>text):
                    return op == OP_IN
            return op == OP_NOT_IN
        if op == OP_CIDR:
            return _in_networks(<const char *>p, n, c.networks,
                                c.n_networks)
        if not _decimal(<const char *>p, n, &number):
            return False
        if op == OP_GT:
            return number > c.number
        if op == OP_GTE:
            return number >= c.number
        if op == OP_LT:
            return number < c.number
        return number <= c.number

    cdef bint _holds_text(self, const _Cond *c, str value) except -1:
        cdef int op = c.op

        if op == OP_EQ:
            return value == <str>c.text
        if op == OP_NE:
            return value != <str>c.text
        if op == OP_IN:
            return PySet_Contains(<object>c.texts, value) == 1
        if op == OP_NOT_IN:
            return PySet_Contains(<object>c.texts, value) == 0

        # Numbers and addresses are ASCII; anything else is neither.
        PyUnicode_READY(value)
        if not PyUnicode_IS_ASCII(value):
            return False
        return self._holds_bytes(
            c, <const unsigned char *>PyUnicode_DATA(value),
            PyUnicode_GET_LENGTH(value))

    cdef bint _holds(self, const _Cond *c, _Ask *ask) except -1:
        cdef const unsigned char *p
        cdef size_t n
        cdef int source = c.source

        if c.op == OP_TIME:
            return self._in_window(c, ask)
        if source == SRC_LICENSE_PLAN:
            return self._holds_bytes(c, ask.record.plan, ask.record.plan_len)
        if source == SRC_LICENSE:
            if not _attribute(&ask.record, c.key_utf8, c.key_len, &p, &n):
                return False
            return self._holds_bytes(c, p, n)

        if source == SRC_CONTEXT:
            value = _lookup(<object>ask.context, <str>c.key)
        elif source == SRC_SUBJECT:
            value = _lookup(<object>ask.subject_attributes, <str>c.key)
        elif source == SRC_RESOURCE:
            value = _lookup(<object>ask.resource_attributes, <str>c.key)
        elif source == SRC_SUBJECT_ID:
            value = <object>ask.subject_id
        elif source == SRC_RESOURCE_ID:
            value = <object>ask.resource_id
        elif source == SRC_RESOURCE_TYPE:
            value = <object>ask.resource_type
        elif source == SRC_ACCOUNT_ID:
            value = <object>ask.account_id
        else:
            return False
        if not isinstance(value, str):
            return False
        return self._holds_text(c, <str>value)

    cdef bint _conditions_hold(self, const _Hot *h, _Ask *ask) except -1:
        cdef Py_ssize_t i
        for i in range(h.first_condition,
                       h.first_condition + h.n_conditions):
            if not self._holds(&self._conds[i], ask):
                return False
        return True

    cdef object _decide(self, _Ask *ask, const unsigned char *data,
                        size_t size):
        cdef uint64_t stack_roles[STACK_ROLE_WORDS]
        cdef int64_t stack_zones[STACK_ZONES]
        cdef _Candidates candidates
        cdef const _Hot *h
        cdef Py_ssize_t allowed = -1
        cdef Py_ssize_t unentitled = -1
        cdef Py_ssize_t i, k
        cdef int rc = _read_record(data, size, &ask.record)

        if rc == -1:
            raise CorruptRecord("license record of %r is truncated"
                                % <object>ask.account_id)
        if rc == -2:
            raise CorruptRecord("license record of %r has format %d"
                                % (<object>ask.account_id, data[0]))

        if ask.record.status != STATUS_ACTIVE:
            return self._inactive
        if ask.now_ms < ask.record.valid_from:
            return self._not_yet_valid
        if ask.now_ms >= ask.record.valid_until:
            return self._expired

        ask.plan = -2
        ask.roles_ready = False
        ask.zones_ready = False
        ask.role_bits = stack_roles
        ask.zone_offsets = stack_zones
        if self._role_words > STACK_ROLE_WORDS:
            ask.role_bits = <uint64_t *>malloc(
                self._role_words * sizeof(uint64_t))
        if self._n_zones > STACK_ZONES:
            ask.zone_offsets = <int64_t *>malloc(
                self._n_zones * sizeof(int64_t))
        try:
            if ask.role_bits == NULL or ask.zone_offsets == NULL:
                raise MemoryError()
            candidates = self._candidates(<str>ask.action,
                                          <str>ask.resource_type)

            for k in range(candidates.n):
                i = candidates.indexes[k]
                h = &self._hot[i]
                if allowed >= 0:
                    if k > candidates.last_deny:
                        break
                    if not h.deny:
                        continue
                if (not h.any_id or h.n_roles) and not self._targets(h, ask):
                    continue
                if h.deny:
                    if self._conditions_hold(h, ask):
                        return (_REASONS[DENIED_BY_RULE], i, -1)
                    continue
                if not self._entitled(h, ask):
                    if unentitled < 0:
                        unentitled = i
                    continue
                if self._conditions_hold(h, ask):
                    allowed = i

            if allowed >= 0:
                return (_REASONS[ALLOWED_BY_RULE], allowed,
                        self._limit_max(&self._hot[allowed], ask))
            if unentitled >= 0:
                return (_REASONS[NOT_ENTITLED], unentitled, -1)
            return self._no_matching_rule
        finally:
            if ask.role_bits != stack_roles:
                free(ask.role_bits)
            if ask.zone_offsets != stack_zones:
                free(ask.zone_offsets)

    cdef void _ask(self, _Ask *ask, str account_id, str subject_id, roles,
                   subject_attributes, str action, str resource_type,
                   str resource_id, resource_attributes, context,
                   int64_t now_ms, tz_offsets) noexcept:
        ask.account_id = <PyObject *>account_id
        ask.subject_id = <PyObject *>subject_id
        ask.roles = NULL if roles is None else <PyObject *>roles
        ask.subject_attributes = <PyObject *>subject_attributes
        ask.action = <PyObject *>action
        ask.resource_type = <PyObject *>resource_type
        ask.resource_id = <PyObject *>resource_id
        ask.resource_attributes = <PyObject *>resource_attributes
        ask.context = <PyObject *>context
        ask.tz_given = NULL if tz_offsets is None else <PyObject *>tz_offsets
        ask.now_ms = now_ms

    def match(self, license, str account_id not None,
              str subject_id not None, roles, subject_attributes,
              str action not None, str resource_type not None,
              str resource_id not None, resource_attributes, context,
              int64_t now_ms, tz_offsets=None):
        """Decide one request; return ``(reason, rule_index, limit_max)``.

        ``license`` is the binary record (any bytes-like object) or None.
        ``tz_offsets`` gives the UTC offset in minutes of each of the
        policy's ``timezones`` at ``now_ms``; when None it is computed with
        ``jitauth.clock`` if a time condition needs it.  Raises
        ``CorruptRecord`` for a malformed record.
        """
        cdef _Ask ask
        cdef Py_buffer view

        if tz_offsets is not None and len(tz_offsets) < self._n_zones:
            raise ValueError("need one offset per time zone of the policy")
        self._ask(&ask, account_id, subject_id, roles, subject_attributes,
                  action, resource_type, resource_id, resource_attributes,
                  context, now_ms, tz_offsets)

        if license is None:
            return self._no_license
        if type(license) is bytes:
            return self._decide(
                &ask, <const unsigned char *>PyBytes_AS_STRING(license),
                PyBytes_GET_SIZE(license))
        PyObject_GetBuffer(license, &view, PyBUF_SIMPLE)
        try:
            return self._decide(&ask, <const unsigned char *>view.buf,
                                view.len)
        finally:
            PyBuffer_Release(&view)

    def match_stored(self, Environment env not None, unsigned int meta_dbi,
                     unsigned int licenses_dbi, str account_id not None,
                     str subject_id not None, roles, subject_attributes,
                     str action not None, str resource_type not None,
                     str resource_id not None, resource_attributes,
                     context, int64_t now_ms):
        """Decide one request against the stored revision and license.

        Reads ``meta/revision`` and the account's license in one read
        transaction.  Returns ``(0, -1, -1)`` when the stored revision is
        not this matcher's: the caller loads the new one and asks again.
        """
        cdef unsigned char stack_record[STACK_RECORD]
        cdef unsigned char *record = stack_record
        cdef size_t size = 0
        cdef bint found = False
        cdef Py_ssize_t key_size
        cdef const char *key
        cdef MDB_txn *txn
        cdef MDB_val k, v
        cdef uint64_t stored = 0
        cdef int rc, i
        cdef _Ask ask

        try:
            key = PyUnicode_AsUTF8AndSize(account_id, &key_size)
        except UnicodeEncodeError:
            key, key_size = NULL, 0

        # The environment's shared reader must not be held across anything
        # that may release the GIL (any Python code may), so the record is
        # copied out and matched after the transaction ends.
        txn = env.read_begin()
        try:
            # A snapshot already checked cannot hold another revision.
            if (<void *>env != self._checked_env
                    or mdb_txn_id(txn) != self._checked_txnid):
                k.mv_size = 8
                k.mv_data = <void *><const char *>b"revision"
                rc = mdb_get(txn, meta_dbi, &k, &v)
                if rc == MDB_NOTFOUND or (
                        rc == MDB_SUCCESS and v.mv_size != 8):
                    raise StoreError("meta/revision is missing or malformed")
                _check(rc, "get revision")
                for i in range(8):
                    stored = (stored << 8) | (
                        <const unsigned char *>v.mv_data)[i]
                if stored != self._revision:
                    return self._stale
                self._checked_env = <void *>env
                self._checked_txnid = mdb_txn_id(txn)

            if key_size > 0:
                k.mv_size = key_size
                k.mv_data = <void *>key
                rc = mdb_get(txn, licenses_dbi, &k, &v)
                if rc == MDB_SUCCESS:
                    found = True
                    size = v.mv_size
                    if size > STACK_RECORD:
                        record = <unsigned char *>malloc(size)
                        if record == NULL:
                            raise MemoryError()
                    memcpy(record, v.mv_data, size)
                elif rc != MDB_NOTFOUND and rc != MDB_BAD_VALSIZE:
                    _check(rc, "get license")
        finally:
            env.read_end()

        try:
            if not found:
                return self._no_license
            self._ask(&ask, account_id, subject_id, roles,
                      subject_attributes, action, resource_type,
                      resource_id, resource_attributes, context, now_ms,
                      None)
            return self._decide(&ask, record, size)
        finally:
            if record != stack_record:
                free(record)
