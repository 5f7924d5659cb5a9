"""jitauth's own matchers, reading licenses from the LMDB environment.

``jitauth-compiled`` is ``jitauth._core.Matcher``; ``jitauth-reference``
is the pure-Python ``jitauth.reference.ReferenceMatcher``.  Both go
through ``match_stored``: one read transaction, the revision check and
the license read per decision, as a server worker does.
"""

import time

from bench.engines import Unavailable, package_version
from jitauth.model import Reason
from jitauth.store import Store

ALLOWED = int(Reason.ALLOWED_BY_RULE)


class MatcherEngine:
    def __init__(self, name: str, workload, matcher_cls):
        self.name = name
        self.version = package_version("jitauth")
        self.notes = ("license read from LMDB per decision "
                      "(match_stored)")
        self.store = Store(workload.data_dir, readonly=True)
        with self.store.env.begin() as txn:
            revision = self.store.current_revision(txn)
            policy = self.store.read_policy(txn, revision)
        self.matcher = matcher_cls(policy, revision)
        self.now_ms = time.time_ns() // 1_000_000

    def inputs(self, requests) -> list:
        env, store = self.store.env, self.store
        return [(env, store.meta, store.licenses, r.account_id,
                 r.subject_id, r.roles, r.subject_attributes, r.action,
                 r.resource_type, r.resource_id, r.resource_attributes,
                 r.context, self.now_ms) for r in requests]

    def decide(self, item) -> bool:
        return self.matcher.match_stored(*item)[0] == ALLOWED

    def explain(self, item) -> tuple:
        """(reason, rule index) for a disagreement report."""
        reason, index, _ = self.matcher.match_stored(*item)
        return Reason(reason).name, index

    def close(self) -> None:
        self.store.close()


def compiled_matcher():
    """``jitauth._core.Matcher``, or raise Unavailable saying why."""
    try:
        from jitauth._core import Matcher
    except ImportError as exc:
        raise Unavailable("jitauth._core has no Matcher yet (the Cython "
                          "matcher is not built: %s)" % exc) from exc
    return Matcher


def build(name: str, workload):
    if name == "jitauth-compiled":
        return MatcherEngine(name, workload, compiled_matcher())
    from jitauth.reference import ReferenceMatcher

    return MatcherEngine(name, workload, ReferenceMatcher)
