"""The audit trail in process: records, sequence, buffer policy, CLI."""

import json
import subprocess
import threading
import time

import pytest
from live_server import JITAUTH, POLICY, write_sources

from jitauth import audit
from jitauth.authorizer import Authorizer
from jitauth.loader import load
from jitauth.model import AuthorizeInput, Outcome
from jitauth.store import Store

pytestmark = pytest.mark.timeout(120)

# reports.view may be renewed for up to a minute.
RENEWABLE = POLICY.replace("grant: {ttl: 2s}",
                           "grant: {ttl: 2s, max_lifetime: 1m}")
NOW = 1_800_000_000_000


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


def _export(account="acme", **fields):
    return AuthorizeInput(account_id=account, subject_id="alice",
                          action="reports.export", resource_type="report",
                          resource_id="q3", roles=("analyst",),
                          context={"env": "prod"}, **fields)


def _view(account="acme", subject="bob"):
    return AuthorizeInput(account_id=account, subject_id=subject,
                          action="reports.view")


@pytest.fixture
def data_dir(tmp_path):
    policy, licenses = write_sources(tmp_path / "src", RENEWABLE)
    load(str(tmp_path / "data"), policy, [licenses])
    return str(tmp_path / "data")


def _open(data_dir, clock=None, **config):
    kwargs = {"clock": clock} if clock else {}
    authorizer = Authorizer(data_dir, **kwargs)
    audit.attach(authorizer, audit.AuditConfig(shadow=False, **config))
    return authorizer


def _records(data_dir) -> list:
    store = Store(data_dir)
    try:
        with store.env.begin() as txn:
            first = audit.first_sequence(store, txn)
            last = audit.last_sequence(store, txn)
            return [audit.read(store, txn, n)
                    for n in range(first, last + 1)] if first else []
    finally:
        store.close()


def _grant_ids(data_dir) -> set:
    store = Store(data_dir)
    try:
        with store.env.begin() as txn:
            return {key.hex() for key, _ in txn.items(store.grants)}
    finally:
        store.close()


def assert_no_gaps(records: list) -> None:
    seqs = [r["seq"] for r in records]
    assert None not in records
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_every_decision_and_grant_has_its_record(data_dir):
    a = _open(data_dir)
    answers = []

    def decide(worker: int) -> None:
        for i in range(150):
            q = [_view(subject="s%d" % worker), _view("globex"),
                 _view("initech"), _export()][i % 4]
            answers.append(a.authorize(q))

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a.close()

    records = _records(data_dir)
    decisions = [r for r in records if r["event"] == "authorize"]
    granted = {r["grant_id"] for r in decisions if r["outcome"] == "granted"}
    assert_no_gaps(records)
    assert len(decisions) == len(answers) == 600
    assert granted == _grant_ids(data_dir)
    assert granted == {x.grant_id for x in answers if x.grant_id}
    assert {r["decision_id"] for r in decisions} == \
        {x.decision_id for x in answers}
    by_id = {r["decision_id"]: r for r in decisions}
    for answer in answers:
        record = by_id[answer.decision_id]
        assert record["decision"] == ("allow" if answer.allowed else "deny")
        assert record["reason"] == answer.reason.name.lower()
        assert record["rule_id"] == answer.rule_id
        assert record["revision"] == answer.revision == 1


def test_allow_record_is_committed_with_the_grant(data_dir):
    a = _open(data_dir)
    grant_id = a.authorize(_view()).grant_id

    with a.store.env.begin() as txn:   # no flush can have happened yet
        last = audit.last_sequence(a.store, txn)
        record = audit.read(a.store, txn, last)
    a.close()

    assert (record["grant_id"], record["outcome"]) == (grant_id, "granted")


def test_grant_changes_are_recorded(data_dir):
    clock = Clock()
    a = _open(data_dir, clock)
    done = a.authorize(_view())
    renewed = a.authorize(_view())
    revoked = a.authorize(_view())
    expired = a.authorize(_view())
    by_account = [a.authorize(_export()) for _ in range(2)]

    a.complete(done.grant_id, Outcome.FAILURE)
    a.complete(done.grant_id, Outcome.SUCCESS)
    a.renew(renewed.grant_id, "acme", 30_000)
    a.revoke(revoked.grant_id)
    clock.now += 3_000      # past the two-second grants only
    a.complete(expired.grant_id, Outcome.SUCCESS)
    a.revoke_account("acme")
    a.close()

    events = [(r["event"], r["grant_id"], r["state"], r["outcome"],
               r["detail"]) for r in _records(data_dir)
              if r["event"] != "authorize"]
    assert events[:6] == [
        ("complete", done.grant_id, "completed", "failure", ""),
        ("complete", done.grant_id, "completed", "failure",
         "already_ended"),
        ("renew", renewed.grant_id, "live", "", ""),
        ("revoke", revoked.grant_id, "revoked", "", ""),
        ("expire", expired.grant_id, "expired", "", ""),
        ("complete", expired.grant_id, "expired", "", "already_ended"),
    ]
    assert sorted(events[6:]) == sorted(
        [("revoke", renewed.grant_id, "revoked", "", "")]
        + [("revoke", g.grant_id, "revoked", "", "") for g in by_account])


def test_expiry_is_recorded_when_purge_finds_it(data_dir):
    clock = Clock()
    a = _open(data_dir, clock)
    answer = a.authorize(_view())
    clock.now += 2 * 3_600_000
    assert a.purge() == 1
    a.close()

    last = _records(data_dir)[-1]
    assert (last["event"], last["grant_id"], last["time_ms"],
            last["expires_at_ms"]) == ("expire", answer.grant_id,
                                       clock.now, answer.expires_at_ms)


def test_dry_runs_and_replays_are_recorded_without_grants(data_dir):
    a = _open(data_dir)
    a.authorize(AuthorizeInput(account_id="acme", subject_id="bob",
                               action="reports.view", dry_run=True))
    first = a.authorize(AuthorizeInput(account_id="acme", subject_id="bob",
                                       action="reports.view",
                                       request_id="r1"))
    again = a.authorize(AuthorizeInput(account_id="acme", subject_id="bob",
                                       action="reports.view",
                                       request_id="r1"))
    a.close()

    outcomes = [(r["decision"], r["outcome"], r["grant_id"])
                for r in _records(data_dir)]
    assert again.replayed
    assert sorted(outcomes) == sorted([
        ("allow", "dry_run", ""), ("allow", "granted", first.grant_id),
        ("allow", "replayed", first.grant_id)])


def test_full_buffer_drops_and_counts_when_configured(data_dir):
    a = _open(data_dir, buffer=4, when_full="drop")
    held = a.store.env.begin(write=True)
    try:
        time.sleep(0.3)  # the writer thread is now waiting for the lock
        answers = [a.authorize(_view("initech")) for _ in range(20)]
    finally:
        held.abort()
    a.close()

    records = _records(data_dir)
    denies = [r for r in records if r["event"] == "authorize"]
    dropped = [r for r in records if r["event"] == "audit_dropped"]
    assert_no_gaps(records)
    assert len(answers) == 20
    assert a.recorder.dropped == 20 - len(denies) > 0
    # The buffer, and what the writer took out of it before it waited.
    assert 4 <= len(denies) <= 8
    assert [int(r["outcome"]) for r in dropped] == [a.recorder.dropped]
    assert "audit buffer full" in dropped[0]["detail"]


def test_full_buffer_blocks_when_configured(data_dir):
    a = _open(data_dir, buffer=4, when_full="block")
    held = a.store.env.begin(write=True)
    decided = []

    def decide():
        for _ in range(20):
            decided.append(a.authorize(_view("initech")))

    worker = threading.Thread(target=decide)
    try:
        time.sleep(0.3)
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()          # waiting for room
        assert 4 <= len(decided) <= 10
    finally:
        held.abort()
    worker.join(20)
    a.close()

    records = _records(data_dir)
    assert len(decided) == 20
    assert a.recorder.dropped == 0
    assert [r["event"] for r in records] == ["authorize"] * 20
    assert_no_gaps(records)


def test_retention_purges_old_records_in_batches(data_dir):
    clock = Clock()
    a = _open(data_dir, clock)
    for _ in range(5):
        a.authorize(_view())
    clock.now += 10_000
    for _ in range(3):
        a.authorize(_view())
    a.close()

    store = Store(data_dir)
    try:
        assert audit.purge(store, NOW + 5_000, batch=2) == 2
        assert audit.purge(store, NOW + 5_000, batch=100) == 3
        assert audit.purge(store, NOW + 5_000) == 0
    finally:
        store.close()
    records = _records(data_dir)
    assert [r["seq"] for r in records] == [6, 7, 8]


def test_retention_keeps_the_newest_record_so_numbers_go_on(data_dir):
    clock = Clock()
    a = _open(data_dir, clock)
    for _ in range(3):
        a.authorize(_view())
    a.close()

    store = Store(data_dir)
    try:
        assert audit.purge(store, NOW + 86_400_000) == 2
    finally:
        store.close()
    a = _open(data_dir, clock)
    a.authorize(_view())
    a.close()

    assert [r["seq"] for r in _records(data_dir)] == [3, 4]


def test_retention_option_is_a_duration():
    assert audit.parse_duration_ms("30d") == 30 * 86_400_000
    assert audit.parse_duration_ms("1h30m") == 5_400_000
    with pytest.raises(ValueError):
        audit.parse_duration_ms("30 days")


def test_audit_off_writes_nothing(data_dir):
    a = Authorizer(data_dir)
    a.authorize(_view())
    a.authorize(_view("initech"))
    a.close()

    assert _records(data_dir) == []
    assert len(_grant_ids(data_dir)) == 1


# -- jitauth audit -----------------------------------------------------------


def _cli(*args, timeout=30):
    return subprocess.run(JITAUTH + ["audit"] + list(args),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def trail(data_dir):
    clock = Clock()
    a = _open(data_dir, clock)
    a.authorize(_view())
    a.authorize(_view("nobody"))
    clock.now += 60_000
    a.authorize(_export())
    a.authorize(_view("initech", "carol"))
    a.close()
    return data_dir


def test_cli_filters_and_exports_json_lines(trail):
    every = _cli("--data", trail, "--json")
    denies = _cli("--data", trail, "--json", "--decision", "deny")
    acme = _cli("--data", trail, "--account", "acme", "--action",
                "reports.export", "--json")
    carol = _cli("--data", trail, "--subject", "carol")
    late = _cli("--data", trail, "--json", "--since",
                "2027-01-15T08:00:30Z")
    early = _cli("--data", trail, "--json", "--until",
                 "2027-01-15T08:00:30Z")

    rows = [json.loads(line) for line in every.stdout.splitlines()]
    assert every.returncode == 0, every.stderr
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert [json.loads(x)["account_id"] for x in
            denies.stdout.splitlines()] == ["nobody", "initech"]
    # An allow is numbered when its grant is issued, a deny when the
    # buffer is written: the numbers follow the commits, not the decisions.
    assert [(r["account_id"], r["decision"]) for r in rows] == [
        ("acme", "allow"), ("acme", "allow"), ("nobody", "deny"),
        ("initech", "deny")]
    assert [json.loads(x)["seq"] for x in acme.stdout.splitlines()] == [2]
    assert carol.stdout.startswith("#4 ") and "DENY license_inactive" in \
        carol.stdout
    assert [json.loads(x)["seq"] for x in late.stdout.splitlines()] == [2, 4]
    assert [json.loads(x)["seq"] for x in early.stdout.splitlines()] == \
        [1, 3]


def test_cli_rejects_bad_input(trail, tmp_path):
    bad_time = _cli("--data", trail, "--since", "yesterday")
    no_data = _cli("--data", str(tmp_path / "nothing"))

    assert bad_time.returncode == 2 and "not a time" in bad_time.stderr
    assert no_data.returncode == 2


@pytest.mark.parametrize("args, words", [
    (["--follow-for", "3"], "--follow-for needs --follow"),
    (["--follow", "--follow-for", "nan"], "positive number of seconds"),
    (["--limit", "0"], "--limit: must be from 1"),
    (["--account", ""], "--account: must not be empty"),
])
def test_cli_refuses_options_that_make_no_sense(trail, args, words):
    done = _cli("--data", trail, *args)

    assert done.returncode == 2
    assert words in done.stderr


def test_cli_follows_new_records(trail):
    follow = subprocess.Popen(
        JITAUTH + ["audit", "--data", trail, "--json", "--follow",
                   "--follow-for", "20", "--account", "acme"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = [json.loads(follow.stdout.readline())["seq"] for _ in range(2)]
        a = _open(trail)
        a.authorize(_view("globex"))
        late = a.authorize(_view())
        a.close()
        newest = json.loads(follow.stdout.readline())
    finally:
        follow.terminate()
        follow.communicate(timeout=10)

    assert seen == [1, 2]
    assert newest["seq"] in (5, 6)
    assert newest["grant_id"] == late.grant_id
