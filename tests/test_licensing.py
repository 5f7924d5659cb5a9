"""Licensing in depth through the facade: seats by scope, quotas by period,
idempotent requests, renewal, revocation, dry runs and explanations."""

import textwrap

import pytest

from jitauth.authorizer import Authorizer
from jitauth.grants import GrantEnded, period_bounds
from jitauth.loader import load
from jitauth.model import (
    AuthorizeInput,
    GrantState,
    InvalidInput,
    Outcome,
    Reason,
)
from jitauth.policy import SourceError, compile_policy

NOW = 1_780_000_000_000          # 2026-05-28T20:26:40Z
HOUR = 3_600_000

POLICY = """\
quotas:
  exports.monthly: {period: month}
  api.hourly: {period: hour}
plans:
  pro:
    entitlements: [reports]
    limits: {exports.concurrent: 2, editors: 1, locks: 1}
    quotas: {exports.monthly: 5, api.hourly: 3}
rules:
  - id: export
    effect: allow
    action: reports.export
    grant: {ttl: 10s, max_lifetime: 1m, limit: exports.concurrent,
            quota: exports.monthly, units: 2}
  - id: edit
    effect: allow
    action: docs.edit
    grant: {ttl: 10s, limit: editors, scope: subject}
  - id: lock
    effect: allow
    action: files.lock
    grant: {ttl: 10s, limit: locks, scope: resource}
  - id: call
    effect: allow
    action: api.call
    grant: {ttl: 5s, quota: api.hourly}
"""
LICENSES = """\
{"account": "acme", "plan": "pro"}
{"account": "big", "plan": "pro", "limits": {"exports.monthly": 100}}
"""


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture(params=["compiled", "reference"])
def env(tmp_path, request):
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "l.jsonl").write_text(LICENSES)
    data = str(tmp_path / "data")
    load(data, str(tmp_path / "p.yaml"), [str(tmp_path / "l.jsonl")])
    clock = Clock()
    a = Authorizer(data, matcher=request.param, clock=clock)
    yield a, clock
    a.close()


def ask(action, account="acme", subject="alice", **fields):
    return AuthorizeInput(account_id=account, subject_id=subject,
                          action=action, **fields)


def test_subject_scope_gives_each_user_a_seat(env):
    a, _ = env

    alice = a.authorize(ask("docs.edit", subject="alice"))
    alice_again = a.authorize(ask("docs.edit", subject="alice"))
    bob = a.authorize(ask("docs.edit", subject="bob"))

    assert alice.allowed and bob.allowed
    assert alice_again.reason == Reason.CONCURRENCY_LIMIT_REACHED
    assert 0 < alice_again.retry_after_ms <= 10_000


def test_resource_scope_locks_each_resource_once(env):
    a, _ = env
    lock = dict(resource_type="file")

    assert a.authorize(ask("files.lock", resource_id="a", **lock)).allowed
    assert a.authorize(ask("files.lock", resource_id="b", **lock)).allowed
    again = a.authorize(ask("files.lock", subject="bob", resource_id="a",
                            **lock))
    assert again.reason == Reason.CONCURRENCY_LIMIT_REACHED


def test_quota_reserves_then_settles(env):
    a, _ = env

    first = a.authorize(ask("reports.export"))
    second = a.authorize(ask("reports.export"))
    a.complete(first.grant_id, Outcome.SUCCESS, units=1)
    a.complete(second.grant_id, Outcome.FAILURE)
    usage = {q.quota: q for q in a.account("acme").quotas}

    assert (first.units, second.units) == (2, 2)
    assert (usage["exports.monthly"].consumed,
            usage["exports.monthly"].reserved) == (1, 0)


def test_exhausted_quota_denies_until_the_period_resets(env):
    a, clock = env
    for _ in range(3):
        grant = a.authorize(ask("api.call"))
        assert grant.allowed
        a.complete(grant.grant_id, Outcome.SUCCESS)

    refused = a.authorize(ask("api.call"))
    _, end = period_bounds("hour", NOW)

    assert refused.reason == Reason.QUOTA_EXHAUSTED
    assert refused.retry_after_ms == end - NOW
    assert "api.hourly" in refused.message

    clock.now = end
    assert a.authorize(ask("api.call")).allowed


def test_expired_uncompleted_grant_counts_as_consumed(env):
    a, clock = env
    grants = [a.authorize(ask("api.call")) for _ in range(3)]
    clock.now += 5_000

    late = a.authorize(ask("api.call"))
    done = a.complete(grants[0].grant_id, Outcome.CANCELLED)

    assert late.reason == Reason.QUOTA_EXHAUSTED
    assert (done.state, done.consumed) == (GrantState.EXPIRED, 1)
    usage = {q.quota: q for q in a.account("acme").quotas}["api.hourly"]
    assert (usage.consumed, usage.reserved) == (1, 2)


def test_units_requested_and_license_override(env):
    a, _ = env

    too_many = a.authorize(ask("reports.export", units=6))
    plenty = a.authorize(ask("reports.export", account="big", units=50))

    assert too_many.reason == Reason.QUOTA_EXHAUSTED
    assert plenty.allowed and plenty.units == 50


@pytest.mark.parametrize("units", [-1, 1_000_001])
def test_absurd_units_are_rejected_and_change_nothing(env, units):
    a, _ = env

    with pytest.raises(InvalidInput) as info:
        a.authorize(ask("reports.export", units=units))

    assert info.value.field == "units"
    assert all(q.reserved == 0 for q in a.account("acme").quotas)


def test_reported_units_above_the_reservation_are_refused(env):
    a, _ = env
    grant = a.authorize(ask("reports.export"))

    with pytest.raises(InvalidInput, match="exceeds the 2 units"):
        a.complete(grant.grant_id, Outcome.SUCCESS, units=3)

    assert a.grant(grant.grant_id).state == GrantState.LIVE


def test_request_id_replays_the_first_answer(env):
    a, _ = env
    q = ask("reports.export", request_id="job-7")

    first = a.authorize(q)
    again = a.authorize(ask("reports.export", request_id="job-7"))

    assert again.replayed and not first.replayed
    assert (again.grant_id, again.decision_id) == (first.grant_id,
                                                   first.decision_id)
    monthly = {q.quota: q for q in a.account("acme").quotas}
    assert monthly["exports.monthly"].reserved == 2
    assert len(a.account("acme").live_grants) == 1


def test_reused_request_id_for_another_request_is_rejected(env):
    a, _ = env
    a.authorize(ask("reports.export", request_id="job-8"))

    with pytest.raises(InvalidInput) as info:
        a.authorize(ask("reports.export", request_id="job-8",
                        context={"env": "other"}))

    assert info.value.field == "request_id"
    assert len(a.account("acme").live_grants) == 1


def test_request_id_is_free_again_after_the_grant_expires(env):
    a, clock = env
    first = a.authorize(ask("reports.export", request_id="job-9"))
    clock.now += 10_000

    second = a.authorize(ask("reports.export", request_id="job-9"))

    assert second.allowed and second.grant_id != first.grant_id


def test_renew_up_to_the_maximum_lifetime(env):
    a, clock = env
    grant = a.authorize(ask("reports.export"))
    clock.now += 8_000

    renewed = a.renew(grant.grant_id, "acme", 30_000)
    with pytest.raises(InvalidInput) as info:
        a.renew(grant.grant_id, "acme", 60_000)

    assert renewed.expires_at_ms == NOW + 38_000
    assert renewed.max_expires_at_ms == NOW + 60_000
    assert info.value.field == "extend_by"
    assert a.grant(grant.grant_id).expires_at_ms == NOW + 38_000
    clock.now += 20_000  # past the first expiry, before the renewed one
    assert a.complete(grant.grant_id, Outcome.SUCCESS).state == \
        GrantState.COMPLETED


def test_renewed_grant_keeps_its_seat(env):
    a, clock = env
    first = a.authorize(ask("docs.edit"))
    a.renew(first.grant_id, "acme", 10_000)  # ttl and max are both 10s
    clock.now += 5_000

    assert a.authorize(ask("docs.edit")).reason == \
        Reason.CONCURRENCY_LIMIT_REACHED


def test_renew_refuses_other_accounts_and_ended_grants(env):
    a, clock = env
    grant = a.authorize(ask("reports.export"))

    with pytest.raises(InvalidInput) as other:
        a.renew(grant.grant_id, "big", 5_000)
    a.revoke(grant.grant_id)
    with pytest.raises(GrantEnded) as ended:
        a.renew(grant.grant_id, "acme", 5_000)

    assert other.value.field == "account_id"
    assert ended.value.state == GrantState.REVOKED


def test_renew_after_expiry_fails(env):
    a, clock = env
    grant = a.authorize(ask("reports.export"))
    clock.now += 10_000

    with pytest.raises(GrantEnded) as ended:
        a.renew(grant.grant_id, "acme", 5_000)

    assert ended.value.state == GrantState.EXPIRED


def test_revoke_frees_seat_and_quota(env):
    a, _ = env
    grant = a.authorize(ask("reports.export"))

    revoked = a.revoke(grant.grant_id)
    completed = a.complete(grant.grant_id, Outcome.SUCCESS)
    view = a.account("acme")

    assert (revoked.state, revoked.already) == (GrantState.REVOKED, False)
    assert (completed.state, completed.already) == (GrantState.REVOKED,
                                                    True)
    assert view.live_grants == [] and view.seats == {}
    assert {q.quota: q.reserved for q in view.quotas}["exports.monthly"] \
        == 0


def test_kill_switch_revokes_every_live_grant_of_the_account(env):
    a, _ = env
    ids = [a.authorize(ask("docs.edit", subject=s)).grant_id
           for s in ("u1", "u2", "u3")]
    other = a.authorize(ask("docs.edit", account="big")).grant_id

    assert a.revoke_account("acme") == 3
    assert a.revoke_account("acme") == 0
    assert all(a.grant(i).state == GrantState.REVOKED for i in ids)
    assert a.grant(other).state == GrantState.LIVE


def test_dry_run_reserves_nothing_but_sees_exhaustion(env):
    a, _ = env
    dry = a.authorize(ask("docs.edit", dry_run=True))
    real = a.authorize(ask("docs.edit"))
    dry_after = a.authorize(ask("docs.edit", dry_run=True))

    assert dry.allowed and dry.dry_run and dry.grant_id == ""
    assert real.allowed
    assert dry_after.reason == Reason.CONCURRENCY_LIMIT_REACHED
    assert len(a.account("acme").live_grants) == 1


def test_explain_names_the_failing_step(env):
    a, _ = env
    a.authorize(ask("docs.edit"))

    limited = a.authorize(ask("docs.edit", explain=True, dry_run=True))
    nothing = a.authorize(ask("reports.delete", explain=True))

    assert any("rule edit (allow): applies" in s
               for s in limited.explanation)
    assert limited.explanation[-3:] == [
        "rules: allowed_by_rule (rule edit)",
        "limit editors (per subject): 1 of 1 slots held by live grants",
        "decision: concurrency_limit_reached, retry in 10 s"]
    assert nothing.explanation[-2:] == ["rules: no_matching_rule",
                                        "decision: no_matching_rule"]


def test_explain_shows_quota_figures(env):
    a, _ = env
    a.authorize(ask("reports.export"))

    allowed = a.authorize(ask("reports.export", explain=True))
    a.complete(allowed.grant_id, Outcome.SUCCESS)
    refused = a.authorize(ask("reports.export", explain=True, units=2))

    assert allowed.explanation[-2] == (
        "quota exports.monthly: 0 consumed + 4 reserved of 5 units this "
        "period; this request reserved 2")
    assert allowed.explanation[-1].startswith(
        "decision: allowed_by_rule, grant %s for 10 s" % allowed.grant_id)
    assert refused.explanation[-2] == (
        "quota exports.monthly: 2 consumed + 2 reserved of 5 units this "
        "period; this request asks for 2")
    assert refused.explanation[-1].startswith("decision: quota_exhausted, "
                                              "retry in ")


def test_account_view(env):
    a, _ = env
    a.authorize(ask("reports.export"))

    view = a.account("acme")

    assert view.license.plan == "pro"
    assert view.seats == {"exports.concurrent": 1}
    monthly = {q.quota: q for q in view.quotas}["exports.monthly"]
    assert (monthly.maximum, monthly.reserved, monthly.period) == (5, 2,
                                                                   "month")
    assert a.account("nobody").license is None


@pytest.mark.parametrize("snippet, field, words", [
    ("quotas: {q: {period: week}}", "quotas.q.period", "hour, day, month"),
    ("quotas: {q: {every: hour}}", "quotas.q.every", "unknown field"),
    ("quotas: [q]", "quotas", "must map"),
])
def test_malformed_period_definitions(snippet, field, words):
    text = snippet + "\nplans: {p: {}}\nrules: [{id: r, effect: allow, " \
        "action: a}]\n"

    with pytest.raises(SourceError) as info:
        compile_policy("p.yaml", text)

    assert (info.value.line, info.value.field) == (1, field)
    assert words in info.value.message


@pytest.mark.parametrize("grant, field, words", [
    ("{quota: nope}", "rules[0].grant.quota", "not defined under quotas"),
    ("{units: 2}", "rules[0].grant.units", "need a quota"),
    ("{quota: q, units: 0}", "rules[0].grant.units", "from 1 to"),
    ("{scope: subject}", "rules[0].grant.scope", "needs a limit"),
    ("{limit: l, scope: team}", "rules[0].grant.scope", "one of"),
    ("{ttl: 1m, max_lifetime: 30s}", "rules[0].grant.max_lifetime",
     "at least the ttl"),
])
def test_grant_field_errors(grant, field, words):
    text = textwrap.dedent("""\
        quotas: {q: {period: day}}
        plans: {p: {limits: {l: 1}, quotas: {q: 1}}}
        rules:
          - {id: r, effect: allow, action: a, grant: %s}
        """) % grant

    with pytest.raises(SourceError) as info:
        compile_policy("p.yaml", text)

    assert info.value.field == field
    assert words in info.value.message


def test_period_bounds_are_utc_calendar_periods():
    assert period_bounds("month", NOW) == (1777593600000, 1780272000000)
    assert period_bounds("day", NOW) == (1779926400000, 1780012800000)
    assert period_bounds("hour", NOW) == (1779998400000, 1780002000000)
    december = 1796083200000 + HOUR  # 2026-12-01T01:00Z
    assert period_bounds("month", december)[1] == 1798761600000


def test_no_replay_once_the_grant_is_revoked(env, tmp_path):
    a, _ = env
    first = a.authorize(ask("reports.export", request_id="job-r"))
    a.revoke_account("acme")
    (tmp_path / "d.jsonl").write_text(
        '{"account": "acme", "plan": "pro", "status": "suspended"}\n')
    from jitauth.loader import apply_delta

    apply_delta(str(tmp_path / "data"), str(tmp_path / "d.jsonl"))
    again = a.authorize(ask("reports.export", request_id="job-r"))

    assert first.allowed
    assert (again.allowed, again.replayed, again.reason) == (
        False, False, Reason.LICENSE_INACTIVE)


def test_replay_follows_a_renewal(env):
    a, clock = env
    first = a.authorize(ask("reports.export", request_id="job-n"))
    a.renew(first.grant_id, "acme", 30_000)
    clock.now += 15_000  # past the first expiry, inside the renewed one

    again = a.authorize(ask("reports.export", request_id="job-n"))

    assert again.replayed and again.grant_id == first.grant_id
    assert again.expires_at_ms == NOW + 30_000
    assert len(a.account("acme").live_grants) == 1


def test_batch_reused_request_id_fails_that_item_only(env):
    a, _ = env

    results = a.authorize_batch([
        ask("reports.export", request_id="b-1"),
        ask("reports.export", request_id="b-1", context={"x": "y"}),
        ask("api.call"),
    ])

    assert results[0].allowed and results[2].allowed
    assert isinstance(results[1], InvalidInput)
    assert results[1].field == "request_id"


def test_renew_refused_once_the_license_is_revoked(env, tmp_path):
    from jitauth.grants import LicenseUnusable
    from jitauth.loader import apply_delta

    a, _ = env
    grant = a.authorize(ask("reports.export"))
    (tmp_path / "d.jsonl").write_text(
        '{"account": "acme", "plan": "pro", "status": "revoked"}\n')
    apply_delta(str(tmp_path / "data"), str(tmp_path / "d.jsonl"))

    with pytest.raises(LicenseUnusable, match="not active"):
        a.renew(grant.grant_id, "acme", 5_000)

    assert a.grant(grant.grant_id).expires_at_ms == NOW + 10_000
