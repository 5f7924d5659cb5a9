"""Validate policy and license files, then store them.

``load`` replaces the policy and, with license files, every license;
``apply_delta`` upserts or removes a few licenses.  Everything is validated
before the write transaction starts, and each write is one transaction: a
bad file leaves the store exactly as it was, and readers switch from the
old data to the new in a single step.

License files are read as a stream, each line validated and encoded once.
A bulk load sorts the records by account before writing them, so LMDB
fills its pages in key order and the writer lock (which grant issuing
needs too) is held only for the writing, not the parsing.
"""

import logging
import os
import sys
import time

from jitauth.licenses import (
    _license,
    _LineError,
    _text,
    _unique_fields,
    decode_line,
    encode_license,
)
from jitauth.policy import SourceError, compile_policy, read_source
from jitauth.revisions import (
    DEFAULT_KEEP,
    compiled_bytes,
    install,
    open_store,
)
from jitauth.store import Store

log = logging.getLogger(__name__)

_DELTA_FIELDS = ("account", "remove")
# A delta's problems reported at once, so that one run shows most of them.
MAX_ERRORS = 20


class Progress:
    """A one-line progress bar on a terminal stream (stderr).

    ``update`` is cheap to call often: the line is redrawn at most ten
    times a second.  Nothing is written when ``enabled`` is false.
    """

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def update(self, label: str, done: int, total: int, count: int,
               force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        line = "%-9s [%-30s] %3d%%  %s accounts  %.1f s" % (
            label, bar, share * 100, format(count, ","),
            now - self.started)
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()


def _lines(path: str):
    """``(number, bytes, offset after the line)`` of a file's content lines.

    Blank lines and lines starting with ``#`` are skipped.
    """
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise SourceError(path, 0, "file", str(exc)) from None
    with f:
        offset = 0
        for number, raw in enumerate(f, 1):
            offset += len(raw)
            text = raw.strip()
            if text and not text.startswith(b"#"):
                yield number, text, offset


def _decode(path: str, number: int, raw: bytes):
    try:
        return decode_line(raw)
    except _LineError as exc:
        raise SourceError(path, number, exc.field, str(exc)) from None


def _record(path: str, number: int, obj, plans) -> tuple:
    """Validate one license object; return (account, binary record).

    The one validation of a license line, for ``load`` and deltas alike.
    """
    try:
        lic = _license(obj, plans)
        return lic.account_id, encode_license(lic)
    except _LineError as exc:
        raise SourceError(path, number, exc.field or "line", str(exc)) \
            from None
    except ValueError as exc:
        raise SourceError(path, number, "line", str(exc)) from None


def read_records(paths, plans, progress: Progress | None = None) -> list:
    """Every license of ``paths`` as ``(key, record)``, sorted by key.

    Raises ``SourceError`` for the first invalid line, and for an account
    licensed twice (naming both places).
    """
    progress = progress or Progress(False)
    total = sum(_size(path) for path in paths)
    entries = []
    before = 0
    for index, path in enumerate(paths):
        for number, raw, offset in _lines(path):
            account, record = _record(path, number, _decode(path, number,
                                                             raw), plans)
            entries.append((account.encode(), index, number, record))
            progress.update("reading", before + offset, total, len(entries))
        before += _size(path)
    progress.update("reading", total, total, len(entries), force=True)

    entries.sort()
    for previous, entry in zip(entries, entries[1:], strict=False):
        if previous[0] == entry[0]:
            raise SourceError(
                paths[entry[1]], entry[2], "account",
                "account %r is already licensed at %s:%d"
                % (entry[0].decode(), paths[previous[1]], previous[2]))
    return [(entry[0], entry[3]) for entry in entries]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def load(data_dir: str, policy_path: str, license_paths=(), *,
         keep: int = DEFAULT_KEEP, progress: bool = False) -> int:
    """Install a policy (and, if given, the full set of licenses).

    With license files, they replace every stored license; without, the
    stored licenses stay.  Returns the new revision number.  Raises
    ``jitauth.policy.SourceError`` on invalid input, before writing.
    ``progress`` draws a progress bar on stderr.
    """
    license_paths = list(license_paths)
    source = read_source(policy_path)
    policy = compile_policy(policy_path, source)

    bar = Progress(progress)
    records = read_records(license_paths, set(policy["plans"]), bar)

    store = Store(data_dir, create=True)
    try:
        with store.env.begin(write=True) as txn:
            if license_paths:
                txn.clear(store.licenses)
                for done, (key, record) in enumerate(records, 1):
                    txn.put(store.licenses, key, record)
                    if done % 4096 == 0:
                        bar.update("writing", done, len(records), done)
                bar.update("writing", len(records), len(records),
                           len(records), force=True)
            revision = install(store, txn, compiled_bytes(policy), {
                "origin": "load",
                "policy_file": os.path.abspath(policy_path),
                "policy_source": source,
                "license_files": [os.path.abspath(p) for p in license_paths],
                "rules": len(policy["rules"]),
            }, keep)
        store.env.sync()
    finally:
        bar.finish()
        store.close()

    log.info("loaded revision %d: %d rules, %d licenses", revision,
             len(policy["rules"]), len(records))
    return revision


class InvalidDelta(SourceError):
    """A delta file has invalid lines; ``errors`` lists them in order."""

    def __init__(self, errors: list):
        first = errors[0]
        super().__init__(first.path, first.line, first.field, first.message)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(ValueError.__str__(e) for e in self.errors)


def read_delta(path: str, plans) -> tuple:
    """A license delta file as ``(upserts, removals)``.

    ``upserts`` is a list of ``(account, record, plan, line)``,
    ``removals`` a list of accounts.  Each line is a license (the load
    format) or ``{"account": "x", "remove": true}``; an account may appear
    once.  Raises ``InvalidDelta`` listing the first ``MAX_ERRORS``
    problems, each naming the file, line and field.
    """
    upserts = []
    removals = []
    errors = []
    seen = {}
    for number, raw, _ in _lines(path):
        try:
            obj = _decode(path, number, raw)
            if isinstance(obj, dict) and "remove" in obj:
                account = _removal(path, number, obj)
                removals.append(account)
            else:
                account, record = _record(path, number, obj, plans)
                upserts.append((account, record, obj["plan"], number))
            if account in seen:
                raise SourceError(path, number, "account",
                                  "account %r is already changed at line %d"
                                  % (account, seen[account]))
            seen[account] = number
        except SourceError as exc:
            errors.append(exc)
            if len(errors) == MAX_ERRORS:
                break
    if errors:
        raise InvalidDelta(errors)
    return upserts, removals


def _removal(path: str, number: int, obj: dict) -> str:
    try:
        _unique_fields(obj)
    except _LineError as exc:
        raise SourceError(path, number, exc.field, str(exc)) from None
    for key in obj:
        if key not in _DELTA_FIELDS:
            raise SourceError(path, number, key,
                              "a removal has only account and remove")
    if obj["remove"] is not True:
        raise SourceError(path, number, "remove", "must be true")
    account = obj.get("account")
    if not isinstance(account, str) or not account:
        raise SourceError(path, number, "account",
                          "must be a non-empty string")
    try:
        _text("account", account, 256)
    except _LineError as exc:
        raise SourceError(path, number, exc.field, str(exc)) from None
    return account


def apply_delta(data_dir: str, path: str) -> dict:
    """Upsert and remove the licenses of a delta file in one transaction.

    The policy revision does not change: workers read the license inside
    each decision's read transaction, so the change decides the next
    request.  Returns counts: ``added``, ``updated``, ``removed`` and
    ``absent`` (removals of accounts that had no license).  Raises
    ``SourceError`` (nothing written) for any invalid line, including a
    plan the active policy does not define.
    """
    store = open_store(data_dir)
    try:
        with store.env.begin() as txn:
            revision = store.current_revision(txn)
            plans = set(_plans(store, txn, revision))
        upserts, removals = read_delta(path, plans)

        counts = {"added": 0, "updated": 0, "removed": 0, "absent": 0}
        with store.env.begin(write=True) as txn:
            if store.current_revision(txn) != revision:
                # A policy was installed meanwhile: check plans against it.
                plans = _plans(store, txn, store.current_revision(txn))
                for _, _, plan, number in upserts:
                    if plan not in plans:
                        raise SourceError(path, number, "plan",
                                          "plan %r is not defined in the "
                                          "policy" % plan)
            for account, record, _, _ in upserts:
                key = account.encode()
                existed = txn.get(store.licenses, key) is not None
                txn.put(store.licenses, key, record)
                counts["updated" if existed else "added"] += 1
            for account in removals:
                removed = txn.delete(store.licenses, account.encode())
                counts["removed" if removed else "absent"] += 1
        store.env.sync()
    finally:
        store.close()

    log.info("license delta %s: %d added, %d updated, %d removed", path,
             counts["added"], counts["updated"], counts["removed"])
    return counts


def _plans(store: Store, txn, revision: int) -> dict:
    if revision == 0:
        return {}
    return store.read_policy(txn, revision)["plans"]
