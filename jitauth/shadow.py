"""Shadow evaluation: a candidate policy decides beside the active one.

``jitauth apply --shadow`` stores a compiled candidate policy in the
``shadow`` sub-database.  Every server worker looks for it once a second
(the audit writer thread does, see :mod:`jitauth.audit`) and, while one is
installed, matches each decided request a second time against it with the
compiled matcher.  The answer the caller gets never changes; when the
candidate's decision or reason differs from the active one, the
disagreement is counted by (active reason and rule, candidate reason and
rule) and the first few requests of each kind are kept as examples.

Comparisons are made at the matcher's level: the active side is the
matcher's own reason, before seats and quotas (a candidate has no grants of
its own to count).

Stored layout of the ``shadow`` sub-database:

| key | value |
|---|---|
| ``candidate_id`` | u64 big-endian, the installed candidate (absent: none) |
| ``next_id`` | u64 big-endian, the last candidate number handed out |
| ``candidate`` | JSON: id, compiled policy, file, source, install time |
| ``evaluated`` | u64 big-endian, decisions evaluated against it |
| ``count:`` + key | u64 big-endian, disagreements of one kind |
| ``example:`` + key + ``#`` + n | JSON of one example request (n < 3) |

A kind's key is the JSON array ``[active reason, active rule, candidate
reason, candidate rule]``.  Storage stays bounded: the kinds are bounded by
the policies' reasons and rules, the examples by three per kind.
"""

import json
import logging
import os
import struct
import threading
import time

from jitauth._core import Matcher
from jitauth.model import Reason

log = logging.getLogger(__name__)

MARK = "shadow"          # tags a disagreement in the audit buffer
EXAMPLES_PER_KIND = 3

CANDIDATE_ID = b"candidate_id"
NEXT_ID = b"next_id"
CANDIDATE = b"candidate"
EVALUATED = b"evaluated"
COUNT = b"count:"
EXAMPLE = b"example:"

_U64 = struct.Struct(">Q")


class NoCandidate(LookupError):
    """No shadow candidate is installed."""


def _u64(raw) -> int:
    return _U64.unpack(raw)[0] if raw else 0


def _add(txn, db, key: bytes, n: int) -> int:
    value = _u64(txn.get(db, key)) + n
    txn.put(db, key, _U64.pack(value))
    return value


class Candidate:
    """The installed candidate, as a worker evaluates it."""

    def __init__(self, candidate_id: int, policy: dict, store, recorder):
        self.id = candidate_id
        self.policy = policy
        self.matcher = Matcher(policy, candidate_id)
        self.store = store
        self.recorder = recorder
        self.evaluated = 0
        self.lock = threading.Lock()
        self._rules = [rule["id"] for rule in policy["rules"]]

    def compare(self, q, now_ms: int, reason: Reason, result) -> None:
        """Match ``q`` against the candidate; record a disagreement."""
        store = self.store
        with store.env.begin() as txn:
            record = txn.get(store.licenses, q.account_id.encode())
        found, index, _ = self.matcher.match(
            record, q.account_id, q.subject_id, q.roles,
            q.subject_attributes, q.action, q.resource_type, q.resource_id,
            q.resource_attributes, q.context, now_ms)
        with self.lock:
            self.evaluated += 1
        if found == reason:
            return

        rule = self._rules[index] if index >= 0 else ""
        kind = json.dumps([reason.name.lower(), result.rule_id,
                           Reason(found).name.lower(), rule])
        example = json.dumps({
            "time_ms": now_ms, "decision_id": result.decision_id,
            "account_id": q.account_id, "subject_id": q.subject_id,
            "roles": list(q.roles), "action": q.action,
            "resource_type": q.resource_type,
            "resource_id": q.resource_id, "revision": result.revision})
        self.recorder.shadow_disagreed((MARK, self.id, kind, example))
        if self.recorder.metrics is not None:
            self.recorder.metrics.shadow_disagreed(
                reason.name.lower(), Reason(found).name.lower())

    def take_evaluated(self) -> int:
        with self.lock:
            n, self.evaluated = self.evaluated, 0
        return n


def store_disagreements(store, txn, items: list) -> None:
    """Count buffered disagreements (in the audit writer's transaction);
    those of a candidate no longer installed are discarded."""
    installed = _u64(txn.get(store.shadow, CANDIDATE_ID))
    for _, candidate_id, kind, example in items:
        if candidate_id != installed:
            continue
        key = kind.encode()
        count = _add(txn, store.shadow, COUNT + key, 1)
        if count <= EXAMPLES_PER_KIND:
            txn.put(store.shadow, b"%s%s#%d" % (EXAMPLE, key, count - 1),
                    example.encode())


def refresh(authorizer, recorder) -> None:
    """Follow the installed candidate; store the evaluated count."""
    store = authorizer.store
    current = authorizer.shadow
    with store.env.begin() as txn:
        installed = _u64(txn.get(store.shadow, CANDIDATE_ID))
    if current is not None:
        n = current.take_evaluated()
        if n:
            with store.env.begin(write=True) as txn:
                if _u64(txn.get(store.shadow, CANDIDATE_ID)) == current.id:
                    _add(txn, store.shadow, EVALUATED, n)
    if current is not None and current.id == installed:
        return

    candidate = None
    if installed:
        with store.env.begin() as txn:
            raw = txn.get(store.shadow, CANDIDATE)
        stored = json.loads(raw)
        candidate = Candidate(installed, stored["policy"], store, recorder)
        log.info("evaluating shadow candidate %d (%d rules) beside the "
                 "active revision", installed, len(stored["policy"]["rules"]))
    elif current is not None:
        log.info("shadow candidate %d removed", current.id)
    authorizer.shadow = candidate
    if recorder.metrics is not None:
        recorder.metrics.shadow_candidate(installed)


# ---------------------------------------------------------------------------
# Operator commands (the CLI)


def _clear(store, txn) -> None:
    """Remove the candidate and its findings; keep the id counter."""
    for key, _ in txn.items(store.shadow):
        if key != NEXT_ID:
            txn.delete(store.shadow, key)


def install(data_dir: str, policy_path: str) -> int:
    """Compile ``policy_path`` and install it as the shadow candidate,
    replacing any other; return the candidate's number.  Raises
    ``jitauth.policy.SourceError`` on an invalid policy, before writing."""
    from jitauth.policy import compile_policy, read_source
    from jitauth.store import Store

    source = read_source(policy_path)
    policy = compile_policy(policy_path, source)

    store = Store(data_dir)
    try:
        with store.env.begin(write=True) as txn:
            _clear(store, txn)
            candidate_id = _add(txn, store.shadow, NEXT_ID, 1)
            txn.put(store.shadow, CANDIDATE, json.dumps({
                "id": candidate_id, "policy": policy,
                "policy_file": os.path.abspath(policy_path),
                "policy_source": source,
                "installed_at_ms": int(time.time() * 1000),
                "beside_revision": store.current_revision(txn),
            }, sort_keys=True).encode())
            txn.put(store.shadow, CANDIDATE_ID, _U64.pack(candidate_id))
        store.env.sync()
    finally:
        store.close()
    log.info("installed shadow candidate %d from %s (%d rules)",
             candidate_id, policy_path, len(policy["rules"]))
    return candidate_id


def drop(data_dir: str) -> int:
    """Remove the candidate and its findings; return its number."""
    from jitauth.store import Store

    store = Store(data_dir)
    try:
        with store.env.begin(write=True) as txn:
            candidate_id = _u64(txn.get(store.shadow, CANDIDATE_ID))
            if not candidate_id:
                raise NoCandidate("no shadow candidate is installed")
            _clear(store, txn)
        store.env.sync()
    finally:
        store.close()
    return candidate_id


def promote(data_dir: str) -> int:
    """Make the candidate the active revision, in one transaction that
    also removes it from the shadow; return the new revision."""
    from jitauth import revisions
    from jitauth.store import Store

    store = Store(data_dir)
    try:
        with store.env.begin(write=True) as txn:
            raw = txn.get(store.shadow, CANDIDATE)
            if raw is None:
                raise NoCandidate("no shadow candidate is installed")
            stored = json.loads(raw)
            revision = revisions.install(
                store, txn, revisions.compiled_bytes(stored["policy"]), {
                    "origin": "shadow",
                    "policy_file": stored["policy_file"],
                    "policy_source": stored["policy_source"],
                    "rules": len(stored["policy"]["rules"]),
                    "shadow_candidate": stored["id"],
                })
            _clear(store, txn)
        store.env.sync()
    finally:
        store.close()
    log.info("promoted shadow candidate %d to revision %d", stored["id"],
             revision)
    return revision


def report(data_dir: str) -> dict:
    """The candidate and its disagreements, most frequent kind first."""
    from jitauth.store import Store

    store = Store(data_dir)
    try:
        with store.env.begin() as txn:
            raw = txn.get(store.shadow, CANDIDATE)
            if raw is None:
                raise NoCandidate("no shadow candidate is installed")
            stored = json.loads(raw)
            evaluated = _u64(txn.get(store.shadow, EVALUATED))
            kinds = []
            for key, value in txn.items(store.shadow, COUNT):
                kind = key[len(COUNT):]
                active_reason, active_rule, reason, rule = json.loads(kind)
                examples = [json.loads(v) for _, v in txn.items(
                    store.shadow, EXAMPLE + kind + b"#")]
                kinds.append({
                    "count": _u64(value),
                    "active": {"reason": active_reason,
                               "decision": _decision(active_reason),
                               "rule_id": active_rule},
                    "candidate": {"reason": reason,
                                  "decision": _decision(reason),
                                  "rule_id": rule},
                    "examples": examples})
            revision = store.current_revision(txn)
    finally:
        store.close()
    kinds.sort(key=lambda k: -k["count"])
    return {
        "candidate": stored["id"],
        "policy_file": stored["policy_file"],
        "installed_at_ms": stored["installed_at_ms"],
        "active_revision": revision,
        "evaluated": evaluated,
        "disagreements": sum(k["count"] for k in kinds),
        "kinds": kinds,
    }


def _decision(reason: str) -> str:
    return "allow" if reason == "allowed_by_rule" else "deny"


# ---------------------------------------------------------------------------
# ``jitauth shadow``


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(found: dict) -> str:
    """The report, readably."""
    lines = ["shadow candidate %d (%s), installed %s, beside revision %d"
             % (found["candidate"], found["policy_file"],
                _iso(found["installed_at_ms"]), found["active_revision"])]
    evaluated, differ = found["evaluated"], found["disagreements"]
    share = " (%.2f %%)" % (100.0 * differ / evaluated) if evaluated else ""
    lines.append("evaluated %d decisions; %d disagree%s"
                 % (evaluated, differ, share))
    for kind in found["kinds"]:
        active, candidate = kind["active"], kind["candidate"]
        lines.append("  %6d  active %s %s (%s)  ->  candidate %s %s (%s)" % (
            kind["count"], active["decision"].upper(), active["reason"],
            active["rule_id"] or "no rule", candidate["decision"].upper(),
            candidate["reason"], candidate["rule_id"] or "no rule"))
        for ex in kind["examples"]:
            resource = ""
            if ex["resource_type"] or ex["resource_id"]:
                resource = " %s:%s" % (ex["resource_type"], ex["resource_id"])
            lines.append("          e.g. %s %s/%s %s%s (decision %s)" % (
                _iso(ex["time_ms"]), ex["account_id"], ex["subject_id"],
                ex["action"], resource, ex["decision_id"]))
    return "\n".join(lines)


def run_command(args) -> int:
    """``jitauth shadow [report|apply|promote|drop]``.

    Exit codes: 0 done; 1 no candidate is installed (report, promote,
    drop); 2 bad arguments, an invalid policy, or no data.
    """
    import sys

    from jitauth._core import StoreError
    from jitauth.policy import SourceError

    try:
        if args.step == "apply":
            if not args.policy:
                print("error: shadow apply needs --policy FILE",
                      file=sys.stderr)
                return 2
            candidate = install(args.data, args.policy)
            print("shadow candidate %d installed" % candidate)
        elif args.step == "promote":
            print("revision %d" % promote(args.data))
        elif args.step == "drop":
            print("shadow candidate %d dropped" % drop(args.data))
        else:
            found = report(args.data)
            print(json.dumps(found, indent=2) if args.json
                  else describe(found))
    except NoCandidate as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except (SourceError, OSError, StoreError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    return 0
