"""The decision path, free of gRPC: validate, match, issue, complete.

``Authorizer`` is what a worker process holds.  It opens the store, keeps
the matcher of the current policy revision, and turns a question into a
decision and, on allow, a grant.  The server, the CLI and the tests all go
through it.
"""

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from jitauth import grants
from jitauth._core import Matcher, StoreError
from jitauth.clock import tz_offsets
from jitauth.licenses import decode_license, plan_and_limit
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
from jitauth.store import Store, durability

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
    Reason.QUOTA_EXHAUSTED: "Quota {quota} of account {account} is used up "
                            "for this period.",
}

# Grants ended or expired more than an hour ago are purged this often.
PURGE_EVERY_S = 60

# A revision can change between reading it and matching; retry this often.
_STALE_RETRIES = 8


class _Revision(NamedTuple):
    """A policy revision's matcher and compiled policy, always together."""

    matcher: object
    policy: dict


class _Decision(NamedTuple):
    """What the matcher answered, before any grant is taken."""

    result: AuthorizeResult
    reason: Reason          # the matcher's own reason, before seats/quotas
    rule: dict | None
    limit_max: int
    current: _Revision


@dataclass(slots=True)
class _Pending:
    """An allowed request on its way to a stored grant."""

    q: AuthorizeInput
    decision: _Decision
    grant: object           # jitauth.grants.Grant
    period_end: int
    refusal: object = None  # jitauth.grants.Refusal
    replayed: bool = False
    error: InvalidInput | None = None
    figures: list = ()      # with explain: the limit and quota figures


@dataclass(slots=True)
class QuotaUsage:
    quota: str
    period: str
    period_start_ms: int
    period_end_ms: int
    consumed: int
    reserved: int     # held by live grants, or by expired ones not settled
    maximum: int


@dataclass(slots=True)
class AccountView:
    account_id: str
    license: object         # jitauth.licenses.License or None
    live_grants: list
    seats: dict             # limit name -> live grants holding a slot
    quotas: list            # QuotaUsage of the current periods
    now_ms: int


def _fingerprint(q: AuthorizeInput) -> str:
    """What makes two requests under one request id the same request."""
    parts = (q.subject_id, sorted(q.roles), sorted(q.subject_attributes
                                                   .items()),
             q.action, q.resource_type, q.resource_id,
             sorted(q.resource_attributes.items()), sorted(q.context.items()),
             q.units)
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def _fill_granted(result: AuthorizeResult, grant: grants.Grant) -> None:
    result.grant_id = grant.id_hex
    result.expires_at_ms = grant.expires_at_ms
    result.units = grant.units


def _answer_record(q: AuthorizeInput, result: AuthorizeResult) -> bytes:
    return json.dumps({
        "fingerprint": _fingerprint(q),
        "decision_id": result.decision_id,
        "revision": result.revision,
        "rule_id": result.rule_id,
        "grant_id": result.grant_id,
        "expires_at_ms": result.expires_at_ms,
        "units": result.units,
    }).encode()


def _stored_answer(store, txn, q: AuthorizeInput, now_ms: int):
    """The first answer to ``q.request_id``, while its grant is live.

    Once the grant has ended (completed, revoked, expired) the id is free
    again and the request is decided afresh: a replay never outlives the
    grant it hands back, and it reports the grant's current expiry (which
    Renew may have moved).
    """
    raw = txn.get(store.requests, grants.request_key(q.account_id,
                                                     q.request_id))
    if raw is None:
        return None
    stored = json.loads(raw)
    grant_id = bytes.fromhex(stored["grant_id"])
    record = txn.get(store.grants, grant_id)
    if record is None:
        return None
    grant = grants.Grant.decode(grant_id, record)
    if not grant.live_at(now_ms):
        return None

    if stored["fingerprint"] != _fingerprint(q):
        raise InvalidInput("request_id", "was already used for a different "
                           "request of this account")
    return AuthorizeResult(
        allowed=True, reason=Reason.ALLOWED_BY_RULE,
        message="Allowed by rule %s (repeated request)." % stored["rule_id"],
        decision_id=stored["decision_id"], revision=stored["revision"],
        rule_id=stored["rule_id"], grant_id=stored["grant_id"],
        expires_at_ms=grant.expires_at_ms, units=stored["units"],
        replayed=True)


def _duration(ms: int) -> str:
    """A span of time for people: 450 ms, 42 s, 39 min 19 s, 3 h 5 min."""
    if ms < 1000:
        return "%d ms" % ms
    seconds = ms // 1000
    if seconds < 120:
        return "%d s" % seconds
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return "%d min %d s" % (minutes, seconds)
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return "%d h %d min" % (hours, minutes)
    return "%d d %d h" % divmod(hours, 24)


def _copy(source: AuthorizeResult, target: AuthorizeResult) -> None:
    for name in AuthorizeResult.__slots__:
        setattr(target, name, getattr(source, name))


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
    if not 0 <= q.units <= grants.MAX_UNITS:
        raise InvalidInput("units", "must be between 0 and %d"
                           % grants.MAX_UNITS)


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
        self._current = None     # a _Revision, swapped whole
        self._explainer = None
        self._durability = durability()
        self._last_purge = time.monotonic()
        # Set by jitauth.audit.attach; None while audit or shadow is off.
        self.recorder = None
        self.audit = None
        self.shadow = None   # jitauth.shadow.Candidate
        try:
            self._refresh()
        except StoreError as exc:
            self.store.close()
            raise Unavailable(str(exc)) from exc
        log.info("opened %s at revision %d with the %s matcher", data_dir,
                 self.revision, matcher)

    @property
    def revision(self) -> int:
        current = self._current
        return current.matcher.revision if current else 0

    @property
    def _matcher(self):
        current = self._current
        return current.matcher if current else None

    @property
    def _policy(self):
        current = self._current
        return current.policy if current else None

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        self.store.close()

    def refresh(self) -> int:
        """Pick up a newly loaded revision now; return the current one."""
        try:
            self._refresh()
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc
        return self.revision

    def _refresh(self) -> None:
        """Build the matcher of the store's current revision."""
        with self.store.env.begin() as txn:
            revision = self.store.current_revision(txn)
            if revision == 0:
                self._current = None
                return
            if self._current and self._current.matcher.revision == revision:
                return
            policy = self.store.read_policy(txn, revision)
        cls = Matcher if self.matcher_name == "compiled" else ReferenceMatcher
        # One assignment, so a thread never sees one revision's matcher
        # with another's policy.
        self._current = _Revision(cls(policy, revision), policy)
        log.info("deciding with policy revision %d (%d rules)", revision,
                 len(policy["rules"]))

    def _match(self, q: AuthorizeInput, now_ms: int) -> tuple:
        """``((reason, rule index, limit slots), revision)``: the answer and
        the ``_Revision`` that gave it, read under one consistent revision.
        """
        store = self.store
        for _ in range(_STALE_RETRIES):
            current = self._current
            if current is None:
                self._refresh()
                if self._current is None:
                    raise Unavailable("no policy has been loaded")
                continue
            matcher = current.matcher

            if self.matcher_name == "compiled":
                found = matcher.match_stored(
                    store.env, store.meta, store.licenses, q.account_id,
                    q.subject_id, q.roles, q.subject_attributes, q.action,
                    q.resource_type, q.resource_id, q.resource_attributes,
                    q.context, now_ms)
            else:
                found = self._match_reference(current, q, now_ms)
            if found[0]:
                return found, current

            self._refresh()
        raise Unavailable("the policy revision kept changing")

    def _match_reference(self, current, q: AuthorizeInput,
                         now_ms: int) -> tuple:
        matcher = current.matcher
        with self.store.env.begin() as txn:
            if self.store.current_revision(txn) != matcher.revision:
                return (0, -1, -1)
            record = txn.get(self.store.licenses, q.account_id.encode())
        offsets = tz_offsets(current.policy["timezones"], now_ms)
        return matcher.match(
            record, q.account_id, q.subject_id, q.roles,
            q.subject_attributes, q.action, q.resource_type, q.resource_id,
            q.resource_attributes, q.context, now_ms, offsets)

    def authorize(self, q: AuthorizeInput) -> AuthorizeResult:
        """Decide ``q`` now; on allow, issue a grant bound to it.

        With ``q.request_id``, a repeat of the same request while its grant
        lives returns the first answer and reserves nothing more.
        """
        validate(q)
        now_ms = self.clock()

        decision = self._decide(q, now_ms)
        if isinstance(decision, AuthorizeResult):
            return decision

        if decision.reason == Reason.ALLOWED_BY_RULE:
            pending = self._pending(q, decision, now_ms)
            self._take([pending], now_ms)
            if pending.error:
                raise pending.error
        return self._finish(q, decision, now_ms)

    def authorize_batch(self, items: list) -> list:
        """Decide each item as ``authorize`` would, in order, at one instant.

        ``items`` holds ``AuthorizeInput`` objects, or ``InvalidInput``
        errors found while parsing; the result holds an ``AuthorizeResult``
        or the ``InvalidInput`` of each item.  The grants of all allowed
        items are issued in one write transaction, in item order.  A store
        failure fails the whole batch (``Unavailable``): nothing is ever
        allowed by accident.
        """
        now_ms = self.clock()
        results = list(items)
        decisions = {}
        for index, item in enumerate(items):
            if isinstance(item, InvalidInput):
                continue
            try:
                validate(item)
                decision = self._decide(item, now_ms)
            except InvalidInput as exc:
                results[index] = exc
                continue
            if isinstance(decision, AuthorizeResult):
                results[index] = decision
            else:
                decisions[index] = decision

        pending = {i: self._pending(items[i], d, now_ms)
                   for i, d in decisions.items()
                   if d.reason == Reason.ALLOWED_BY_RULE}
        self._take(list(pending.values()), now_ms)
        for index, decision in decisions.items():
            if index in pending and pending[index].error:
                results[index] = pending[index].error
            else:
                results[index] = self._finish(items[index], decision,
                                              now_ms)
        return results

    def _decide(self, q: AuthorizeInput, now_ms: int):
        """Match ``q``: a ``_Decision``, or the stored answer it repeats."""
        try:
            if q.request_id and not q.dry_run:
                replay = self._replay(q, now_ms)
                if replay:
                    if self.audit is not None:
                        self.audit.decided(q, replay, now_ms)
                    return replay
            (reason, index, limit_max), current = self._match(q, now_ms)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

        reason = Reason(reason)
        rule = current.policy["rules"][index] if index >= 0 else None
        result = AuthorizeResult(
            allowed=False, reason=reason, message="",
            decision_id=os.urandom(12).hex(),
            revision=current.matcher.revision,
            rule_id=rule["id"] if rule else "", dry_run=q.dry_run)
        return _Decision(result, reason, rule, limit_max, current)

    def _finish(self, q: AuthorizeInput, decision: "_Decision",
                now_ms: int) -> AuthorizeResult:
        """Explain, word, compare with the shadow and record a decision."""
        result, rule = decision.result, decision.rule
        if q.explain:
            result.explanation = self._explain(q, now_ms, result,
                                               decision.limit_max,
                                               decision.current)

        result.message = _MESSAGES[result.reason].format(
            rule=result.rule_id, account=q.account_id, action=q.action,
            limit=rule["limit"] if rule else "",
            quota=rule["quota"] if rule else "")
        if self.shadow is not None:
            self.shadow.compare(q, now_ms, decision.reason, result)
        if self.audit is not None:
            self.audit.decided(q, result, now_ms)
        return result

    def _replay(self, q: AuthorizeInput, now_ms: int):
        with self.store.env.begin() as txn:
            return _stored_answer(self.store, txn, q, now_ms)

    def _pending(self, q: AuthorizeInput, decision: "_Decision",
                 now_ms: int) -> "_Pending":
        """The grant an allow would issue, not stored yet."""
        rule, result = decision.rule, decision.result
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
            quota=rule["quota"] or "",
            request_id=q.request_id,
            decision_id=result.decision_id,
            scope=grants.SCOPES.index(rule["scope"]),
            units=(q.units or rule["units"]) if rule["quota"] else 0,
            max_expires_at_ms=now_ms + rule["max_lifetime_ms"],
        )
        period_end = 0
        if grant.quota:
            period = decision.current.policy["quotas"][grant.quota]
            grant.period_start_ms, period_end = grants.period_bounds(
                period, now_ms)
        return _Pending(q, decision, grant, period_end)

    def _take(self, pending: list, now_ms: int) -> None:
        """Take the seats and quota units of allowed requests and store
        their grants, all in one write transaction (a read transaction
        when every one of them is a dry run)."""
        if not pending:
            return
        write = not all(p.q.dry_run for p in pending)
        try:
            with self.store.env.begin(write=write) as txn:
                for p in pending:
                    self._place(txn, p, now_ms)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

        for p in pending:
            result = p.decision.result
            if p.replayed or p.error:
                continue
            if p.q.explain:
                result.explanation = p.figures
            if p.refusal is None:
                result.allowed = True
                if not p.q.dry_run:
                    _fill_granted(result, p.grant)
            elif p.refusal.what == "limit":
                result.reason = Reason.CONCURRENCY_LIMIT_REACHED
                result.retry_after_ms = p.refusal.retry_after_ms
            else:
                result.reason = Reason.QUOTA_EXHAUSTED
                result.retry_after_ms = p.period_end - now_ms

    def _place(self, txn, p: "_Pending", now_ms: int) -> None:
        q, grant, result = p.q, p.grant, p.decision.result
        if q.request_id and not q.dry_run:
            key = grants.request_key(q.account_id, q.request_id)
            try:
                replay = _stored_answer(self.store, txn, q, now_ms)
            except InvalidInput as exc:
                p.error = exc  # this item only: the others still go in
                return
            if replay:
                _copy(replay, result)
                p.replayed = True
                return

        policy = p.decision.current.policy
        quota_max = (self._quota_max(txn, grant, policy) if grant.quota
                     else 0)
        if q.dry_run:
            p.refusal = grants.check(self.store, txn, grant,
                                     p.decision.limit_max, quota_max)
        else:
            p.refusal = grants.issue(self.store, txn, grant,
                                     p.decision.limit_max, quota_max)
        if q.explain:
            p.figures = self._figures(txn, p, quota_max, now_ms)
        if q.dry_run or p.refusal is not None:
            return

        if self.audit is not None:
            self.audit.granted(txn, q, result, grant)
        if q.request_id:
            _fill_granted(result, grant)
            txn.put(self.store.requests, key, _answer_record(q, result))

    def _figures(self, txn, p: "_Pending", quota_max: int,
                 now_ms: int) -> list:
        """The limit and quota figures an explanation shows."""
        grant, lines = p.grant, []
        taken = p.refusal is None and not p.q.dry_run
        if grant.limit:
            live = len(grants.live_seats(self.store, txn,
                                         grants.seat_prefix(grant), now_ms))
            lines.append("limit %s (per %s): %d of %d slots held by live "
                         "grants%s" % (grant.limit,
                                       grants.SCOPES[grant.scope], live,
                                       p.decision.limit_max,
                                       ", this one included" if taken
                                       else ""))
        if grant.quota:
            consumed, reserved = grants.read_usage(
                self.store, txn, grants.usage_key(
                    grant.account_id, grant.quota, grant.period_start_ms))
            lines.append("quota %s: %d consumed + %d reserved of %d units "
                         "this period; this request %s %d"
                         % (grant.quota, consumed, reserved, quota_max,
                            "reserved" if taken else "asks for",
                            grant.units))
        return lines

    def _quota_max(self, txn, grant: grants.Grant, policy: dict) -> int:
        """The account's quota: its license's own figure, else its plan's."""
        record = txn.get(self.store.licenses, grant.account_id.encode())
        if record is None:
            return 0
        plan, own = plan_and_limit(record, grant.quota)
        if own is not None:
            return own
        return policy["plans"].get(plan, {}).get("quotas", {}).get(
            grant.quota, 0)

    def _explain(self, q: AuthorizeInput, now_ms: int,
                 result: AuthorizeResult, limit_max: int, current) -> list:
        with self.store.env.begin() as txn:
            record = txn.get(self.store.licenses, q.account_id.encode())
        revision = current.matcher.revision
        explainer = self._explainer
        if explainer is None or explainer.revision != revision:
            explainer = ReferenceMatcher(current.policy, revision)
            self._explainer = explainer
        steps = explainer.explain(
            record, q.account_id, q.subject_id, q.roles,
            q.subject_attributes, q.action, q.resource_type, q.resource_id,
            q.resource_attributes, q.context, now_ms,
            tz_offsets(current.policy["timezones"], now_ms))
        # The steps end with the rules' verdict; the figures of the seat
        # and quota taken after it, then the final decision, follow.
        steps.extend(result.explanation)
        verdict = "decision: %s" % result.reason.name.lower()
        if result.retry_after_ms:
            verdict += ", retry in %s" % _duration(result.retry_after_ms)
        if result.grant_id:
            verdict += ", grant %s for %s" % (
                result.grant_id, _duration(result.expires_at_ms - now_ms))
        if result.dry_run and result.allowed:
            verdict += " (dry run: nothing issued)"
        return steps + [verdict]

    def complete(self, grant_id: str, outcome: Outcome,
                 units: int | None = None) -> CompleteResult:
        """End a grant (idempotent); raises ``GrantNotFound``."""
        try:
            return grants.complete(self.store, grant_id, outcome,
                                   self.clock(), units)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

    def renew(self, grant_id: str, account_id: str,
              extend_by_ms: int) -> grants.Grant:
        """Extend a live grant; raises ``grants.GrantEnded`` once ended."""
        try:
            return grants.renew(self.store, grant_id, account_id,
                                extend_by_ms, self.clock())
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

    def revoke(self, grant_id: str) -> CompleteResult:
        try:
            return grants.revoke(self.store, grant_id, self.clock())
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

    def revoke_account(self, account_id: str) -> int:
        """Revoke every live grant of an account (the kill switch)."""
        _text("account_id", account_id, MAX_ID_BYTES, True)
        try:
            return grants.revoke_account(self.store, account_id,
                                         self.clock())
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

    def grant(self, grant_id: str) -> grants.Grant:
        with self.store.env.begin() as txn:
            return grants.find(self.store, txn, grant_id)

    def account(self, account_id: str) -> AccountView:
        """The account's license, live grants, seats and quota usage."""
        _text("account_id", account_id, MAX_ID_BYTES, True)
        now_ms = self.clock()
        with self.store.env.begin() as txn:
            record = txn.get(self.store.licenses, account_id.encode())
            lic = decode_license(account_id, record) if record else None
            live = grants.live_grants(self.store, txn, account_id, now_ms)
            usage = []
            policy = self._policy or {}
            plan = policy.get("plans", {}).get(lic.plan if lic else "", {})
            for quota, period in policy.get("quotas", {}).items():
                start, end = grants.period_bounds(period, now_ms)
                consumed, reserved = grants.read_usage(
                    self.store, txn, grants.usage_key(account_id, quota,
                                                      start))
                maximum = (lic.limits.get(quota, plan.get("quotas", {}).get(
                    quota, 0)) if lic else 0)
                usage.append(QuotaUsage(quota, period, start, end, consumed,
                                        reserved, maximum))
        seats = {}
        for g in live:
            if g.limit:
                seats[g.limit] = seats.get(g.limit, 0) + 1
        return AccountView(account_id, lic, live, seats, usage, now_ms)

    def maintain(self) -> None:
        """Periodic upkeep; the server calls it about once a second.

        Flushes grant writes to disk under the ``interval`` durability and,
        every ``PURGE_EVERY_S`` seconds, purges grants long dead.
        """
        if self._durability == "interval":
            self.store.env.sync()
        self.store.env.release_reader()
        now = time.monotonic()
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            removed = self.purge()
            if removed:
                log.debug("purged %d grants", removed)

    def purge(self, keep_ms: int = 3_600_000) -> int:
        """Delete grant records that expired more than ``keep_ms`` ago."""
        removed = 0
        while True:
            batch = grants.purge(self.store, self.clock(), keep_ms)
            removed += batch
            if batch < grants.PURGE_BATCH:
                return removed
