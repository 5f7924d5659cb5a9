"""The decision path, free of gRPC: validate, match, issue, complete.

``Authorizer`` is what a worker process holds.  It opens the store, keeps
the matcher of the current policy revision, and turns a question into a
decision and, on allow, a grant.  The server, the CLI and the tests all go
through it.
"""

import logging
import os
import time

from jitauth import grants
from jitauth._core import Matcher, StoreError
from jitauth.clock import tz_offsets
from jitauth.limits import (
    MAX_ACTION_BYTES,
    MAX_ATTRIBUTES,
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    MAX_ROLES,
    MAX_VALUE_BYTES,
)
from jitauth.model import (
    AuthorizeInput,
    AuthorizeResult,
    CompleteResult,
    InvalidInput,
    Outcome,
    Reason,
    Unavailable,
)
from jitauth.reference import ReferenceMatcher
from jitauth.store import Store

log = logging.getLogger(__name__)

MATCHERS = ("compiled", "reference")

_MESSAGES = {
    Reason.ALLOWED_BY_RULE: "Allowed by rule {rule}.",
    Reason.NO_LICENSE: "Account {account} has no license.",
    Reason.LICENSE_INACTIVE: "The license of account {account} is not "
                             "active.",
    Reason.LICENSE_EXPIRED: "The license of account {account} has expired.",
    Reason.LICENSE_NOT_YET_VALID: "The license of account {account} is not "
                                  "valid yet.",
    Reason.NOT_ENTITLED: "The plan of account {account} does not include "
                         "{action} (rule {rule}).",
    Reason.DENIED_BY_RULE: "Denied by rule {rule}.",
    Reason.NO_MATCHING_RULE: "No rule allows {action} for this subject.",
    Reason.CONCURRENCY_LIMIT_REACHED: "All slots of limit {limit} of account "
                                      "{account} are in use.",
}

# A revision can change between reading it and matching; retry this often.
_STALE_RETRIES = 8


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(field: str, value: str, limit: int, required=False) -> None:
    if required and not value:
        raise InvalidInput(field, "is required")
    if len(value) * 4 > limit and len(value.encode()) > limit:
        raise InvalidInput(field, "is longer than %d bytes" % limit)


def _attributes(field: str, attributes) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidInput(field, "has more than %d entries" % MAX_ATTRIBUTES)
    for key, value in attributes.items():
        _text('%s["%s"]' % (field, key[:64]), key, MAX_KEY_BYTES, True)
        _text('%s["%s"]' % (field, key[:64]), value, MAX_VALUE_BYTES)


def validate(q: AuthorizeInput) -> None:
    """Raise ``InvalidInput`` naming the first malformed field of ``q``."""
    _text("account_id", q.account_id, MAX_ID_BYTES, True)
    _text("subject.id", q.subject_id, MAX_ID_BYTES, True)
    _text("action", q.action, MAX_ACTION_BYTES, True)
    _text("resource.type", q.resource_type, MAX_ACTION_BYTES)
    _text("resource.id", q.resource_id, MAX_ID_BYTES)
    _text("request_id", q.request_id, MAX_ID_BYTES)
    if len(q.roles) > MAX_ROLES:
        raise InvalidInput("subject.roles", "has more than %d roles"
                           % MAX_ROLES)
    for role in q.roles:
        _text("subject.roles", role, MAX_ID_BYTES, True)
    _attributes("subject.attributes", q.subject_attributes)
    _attributes("resource.attributes", q.resource_attributes)
    _attributes("context", q.context)


class Authorizer:
    """Decisions and grants over one data directory.

    Open it in the process that uses it (after fork).  ``matcher`` selects
    the compiled matcher (the default) or the pure-Python reference; the
    choice is logged and never changes behind the caller's back.  ``clock``
    returns the time in ms since the epoch; tests pass their own.
    """

    def __init__(self, data_dir: str, *, matcher: str = "compiled",
                 clock=_now_ms):
        if matcher not in MATCHERS:
            raise ValueError("matcher must be one of %s" % (MATCHERS,))
        try:
            self.store = Store(data_dir)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc
        self.matcher_name = matcher
        self.clock = clock
        self._matcher = None
        self._policy = None
        try:
            self._refresh()
        except StoreError as exc:
            self.store.close()
            raise Unavailable(str(exc)) from exc
        log.info("opened %s at revision %d with the %s matcher", data_dir,
                 self.revision, matcher)

    @property
    def revision(self) -> int:
        return self._matcher.revision if self._matcher else 0

    def close(self) -> None:
        self.store.close()

    def _refresh(self) -> None:
        """Build the matcher of the store's current revision."""
        with self.store.env.begin() as txn:
            revision = self.store.current_revision(txn)
            if revision == 0:
                self._matcher = None
                return
            if self._matcher and self._matcher.revision == revision:
                return
            policy = self.store.read_policy(txn, revision)
        cls = Matcher if self.matcher_name == "compiled" else ReferenceMatcher
        self._matcher = cls(policy, revision)
        self._policy = policy
        log.info("deciding with policy revision %d (%d rules)", revision,
                 len(policy["rules"]))

    def _match(self, q: AuthorizeInput, now_ms: int) -> tuple:
        """(reason, rule index, limit slots) under one consistent revision."""
        store = self.store
        for _ in range(_STALE_RETRIES):
            matcher = self._matcher
            if matcher is None:
                self._refresh()
                if self._matcher is None:
                    raise Unavailable("no policy has been loaded")
                continue

            if self.matcher_name == "compiled":
                found = matcher.match_stored(
                    store.env, store.meta, store.licenses, q.account_id,
                    q.subject_id, q.roles, q.subject_attributes, q.action,
                    q.resource_type, q.resource_id, q.resource_attributes,
                    q.context, now_ms)
            else:
                found = self._match_reference(matcher, q, now_ms)
            if found[0]:
                return found

            self._refresh()
        raise Unavailable("the policy revision kept changing")

    def _match_reference(self, matcher, q: AuthorizeInput,
                         now_ms: int) -> tuple:
        with self.store.env.begin() as txn:
            if self.store.current_revision(txn) != matcher.revision:
                return (0, -1, -1)
            record = txn.get(self.store.licenses, q.account_id.encode())
        offsets = tz_offsets(self._policy["timezones"], now_ms)
        return matcher.match(
            record, q.account_id, q.subject_id, q.roles,
            q.subject_attributes, q.action, q.resource_type, q.resource_id,
            q.resource_attributes, q.context, now_ms, offsets)

    def authorize(self, q: AuthorizeInput) -> AuthorizeResult:
        """Decide ``q`` now; on allow, issue a grant bound to it."""
        validate(q)
        now_ms = self.clock()

        try:
            reason, index, limit_max = self._match(q, now_ms)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc
        reason = Reason(reason)
        policy = self._policy
        rule = policy["rules"][index] if index >= 0 else None
        result = AuthorizeResult(
            allowed=False, reason=reason, message="",
            decision_id=os.urandom(12).hex(), revision=self.revision,
            rule_id=rule["id"] if rule else "")

        if reason == Reason.ALLOWED_BY_RULE:
            self._grant(q, rule, limit_max, now_ms, result)

        result.message = _MESSAGES[result.reason].format(
            rule=result.rule_id, account=q.account_id, action=q.action,
            limit=rule["limit"] if rule else "")
        return result

    def _grant(self, q: AuthorizeInput, rule: dict, limit_max: int,
               now_ms: int, result: AuthorizeResult) -> None:
        grant = grants.Grant(
            grant_id=grants.new_grant_id(),
            state=grants.GrantState.LIVE,
            outcome=None,
            issued_at_ms=now_ms,
            expires_at_ms=now_ms + rule["ttl_ms"],
            ended_at_ms=0,
            revision=result.revision,
            account_id=q.account_id,
            subject_id=q.subject_id,
            action=q.action,
            resource_type=q.resource_type,
            resource_id=q.resource_id,
            rule_id=rule["id"],
            limit=rule["limit"] or "",
            request_id=q.request_id,
            decision_id=result.decision_id,
        )
        try:
            with self.store.env.begin(write=True) as txn:
                issued = grants.issue(self.store, txn, grant, limit_max)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

        if not issued:
            result.reason = Reason.CONCURRENCY_LIMIT_REACHED
            return
        result.allowed = True
        result.grant_id = grant.grant_id.hex()
        result.expires_at_ms = grant.expires_at_ms

    def complete(self, grant_id: str, outcome: Outcome) -> CompleteResult:
        """End a grant (idempotent); raises ``GrantNotFound``."""
        try:
            return grants.complete(self.store, grant_id, outcome,
                                   self.clock())
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

    def purge(self, keep_ms: int = 3_600_000) -> int:
        """Delete grant records that expired more than ``keep_ms`` ago."""
        removed = 0
        while True:
            batch = grants.purge(self.store, self.clock(), keep_ms)
            removed += batch
            if batch < 1000:
                return removed
