"""The decision path without gRPC: quickstart, grants, expiry, limits."""

import multiprocessing
import textwrap

import pytest

from jitauth.authorizer import Authorizer
from jitauth.demo import ensure_demo
from jitauth.loader import load
from jitauth.model import (
    AuthorizeInput,
    GrantNotFound,
    GrantState,
    InvalidInput,
    Outcome,
    Reason,
    Unavailable,
)

NOW = 1_780_000_000_000  # 2026-05-28, a Thursday

POLICY = """\
plans:
  pro:
    entitlements: [reports.export]
    limits: {exports.concurrent: 2}
rules:
  - id: export
    effect: allow
    action: reports.export
    entitlement: reports.export
    grant: {ttl: 10s, limit: exports.concurrent}
  - id: open
    effect: allow
    action: reports.view
    grant: {ttl: 5s}
"""


class Clock:
    def __init__(self, now: int = NOW):
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=["compiled", "reference"])
def matcher(request):
    return request.param


def write_data(directory, policy=POLICY, licenses=None) -> str:
    directory.mkdir(exist_ok=True)
    policy_path = directory / "policy.yaml"
    policy_path.write_text(textwrap.dedent(policy))
    licenses_path = directory / "licenses.jsonl"
    licenses_path.write_text(licenses or '{"account": "acme", "plan": "pro"}'
                             '\n{"account": "solo", "plan": "pro", '
                             '"limits": {"exports.concurrent": 1}}\n')
    data = str(directory / "data")
    load(data, str(policy_path), [str(licenses_path)])
    return data


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def authorizer(tmp_path, matcher, clock):
    a = Authorizer(write_data(tmp_path), matcher=matcher, clock=clock)
    yield a
    a.close()


def ask(account="acme", action="reports.export", **fields) -> AuthorizeInput:
    return AuthorizeInput(account_id=account, subject_id="alice",
                          action=action, **fields)


def test_quickstart(tmp_path, matcher):
    data = str(tmp_path / "demo")
    ensure_demo(data)
    a = Authorizer(data, matcher=matcher)
    export = dict(action="reports.export", roles=("analyst",),
                  resource_type="report", resource_id="q3-revenue",
                  context={"env": "prod"})

    allowed = a.authorize(ask("acme", **export))
    not_entitled = a.authorize(ask("globex", **export))
    inactive = a.authorize(ask("initech", **export))
    unknown = a.authorize(ask("nobody", **export))

    assert (allowed.allowed, allowed.reason) == (True,
                                                 Reason.ALLOWED_BY_RULE)
    assert allowed.rule_id == "export-reports"
    assert 0 < allowed.expires_at_ms - a.clock() <= 60_000
    assert len(allowed.grant_id) == 32
    assert not_entitled.reason == Reason.NOT_ENTITLED
    assert inactive.reason == Reason.LICENSE_INACTIVE
    assert unknown.reason == Reason.NO_LICENSE
    assert not any(r.allowed or r.grant_id
                   for r in (not_entitled, inactive, unknown))
    assert "nobody has no license" in unknown.message
    a.close()


def test_allow_then_complete(authorizer, clock):
    result = authorizer.authorize(ask())
    clock.now += 3000

    done = authorizer.complete(result.grant_id, Outcome.SUCCESS)

    assert result.allowed and result.revision == 1
    assert result.expires_at_ms == NOW + 10_000
    assert (done.state, done.already, done.outcome) == (
        GrantState.COMPLETED, False, Outcome.SUCCESS)
    assert done.ended_at_ms == NOW + 3000
    assert (done.account_id, done.action) == ("acme", "reports.export")


def test_complete_twice_reports_the_first_end(authorizer):
    grant_id = authorizer.authorize(ask()).grant_id
    authorizer.complete(grant_id, Outcome.FAILURE)

    again = authorizer.complete(grant_id, Outcome.SUCCESS)

    assert (again.state, again.already, again.outcome) == (
        GrantState.COMPLETED, True, Outcome.FAILURE)


def test_expired_grant_is_dead_without_a_sweeper(authorizer, clock):
    grant_id = authorizer.authorize(ask()).grant_id
    clock.now += 10_000

    late = authorizer.complete(grant_id, Outcome.SUCCESS)

    assert (late.state, late.already, late.outcome) == (
        GrantState.EXPIRED, True, None)
    assert late.ended_at_ms == NOW + 10_000


def test_limit_counts_live_grants(authorizer, clock):
    first = authorizer.authorize(ask())
    second = authorizer.authorize(ask())
    third = authorizer.authorize(ask())
    other_account = authorizer.authorize(ask("solo"))

    assert first.allowed and second.allowed and other_account.allowed
    assert (third.allowed, third.reason) == (
        False, Reason.CONCURRENCY_LIMIT_REACHED)
    assert third.grant_id == "" and "exports.concurrent" in third.message

    authorizer.complete(first.grant_id, Outcome.CANCELLED)
    assert authorizer.authorize(ask()).allowed
    assert not authorizer.authorize(ask()).allowed

    clock.now += 10_000  # every grant expires: the slots free themselves
    assert authorizer.authorize(ask()).allowed
    assert authorizer.authorize(ask()).allowed


def test_license_override_of_a_limit(authorizer):
    assert authorizer.authorize(ask("solo")).allowed
    assert authorizer.authorize(ask("solo")).reason == \
        Reason.CONCURRENCY_LIMIT_REACHED


def test_grant_ids_are_unique_and_random(authorizer):
    ids = {authorizer.authorize(ask(action="reports.view")).grant_id
           for _ in range(200)}

    assert len(ids) == 200
    assert all(len(bytes.fromhex(i)) == 16 for i in ids)


def test_unknown_and_malformed_grant_ids(authorizer):
    with pytest.raises(GrantNotFound):
        authorizer.complete("00" * 16, Outcome.SUCCESS)
    with pytest.raises(InvalidInput) as info:
        authorizer.complete("not-a-grant", Outcome.SUCCESS)
    assert info.value.field == "grant_id"


@pytest.mark.parametrize("fields, field", [
    (dict(account_id=""), "account_id"),
    (dict(subject_id=""), "subject.id"),
    (dict(action=""), "action"),
    (dict(account_id="a" * 257), "account_id"),
    (dict(resource_id="é" * 129), "resource.id"),
    (dict(roles=("r",) * 65), "subject.roles"),
    (dict(context={str(i): "v" for i in range(65)}), "context"),
    (dict(context={"k": "v" * 4097}), 'context["k"]'),
    (dict(subject_attributes={"": "v"}), 'subject.attributes[""]'),
])
def test_invalid_input_names_the_field(authorizer, fields, field):
    q = ask()
    for name, value in fields.items():
        setattr(q, name, value)

    with pytest.raises(InvalidInput) as info:
        authorizer.authorize(q)

    assert info.value.field == field


def test_new_revision_is_used_at_once(tmp_path, authorizer):
    assert authorizer.authorize(ask(action="reports.view")).allowed
    policy = tmp_path / "v2.yaml"
    policy.write_text(POLICY.replace("action: reports.view",
                                     "action: reports.list"))

    load(str(tmp_path / "data"), str(policy))
    after = authorizer.authorize(ask(action="reports.view"))

    assert (after.revision, after.reason) == (2, Reason.NO_MATCHING_RULE)
    assert authorizer.authorize(ask(action="reports.list")).allowed


def test_no_data_is_unavailable(tmp_path, matcher):
    with pytest.raises(Unavailable):
        Authorizer(str(tmp_path / "nothing"), matcher=matcher)


def test_purge_removes_long_dead_grants(authorizer, clock):
    grant_id = authorizer.authorize(ask()).grant_id
    clock.now += 10_000 + 3_600_001

    assert authorizer.purge(keep_ms=3_600_000) == 1
    with pytest.raises(GrantNotFound):
        authorizer.complete(grant_id, Outcome.SUCCESS)


def _race(data: str, matcher: str, tries: int, start, results) -> None:
    a = Authorizer(data, matcher=matcher)
    start.wait()
    allowed = sum(a.authorize(ask("solo")).allowed for _ in range(tries))
    results.put(allowed)


def test_last_slot_is_taken_once_across_processes(tmp_path, matcher):
    data = write_data(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_race, args=(data, matcher, 50, start,
                                               results))
               for _ in range(4)]
    for w in workers:
        w.start()

    start.set()
    allowed = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)

    assert sum(allowed) == 1
