"""Shadow evaluation through ``jitauth serve`` and the ``shadow`` command."""

import json
import subprocess
import time

import pytest
from live_server import (
    JITAUTH,
    POLICY,
    ServeProcess,
    load_cli,
    stub,
    wait_serving,
    write_sources,
)

from jitauth.authorizer import Authorizer
from jitauth.model import AuthorizeInput, Reason
from jitauth.v1 import authorizer_pb2 as pb

pytestmark = pytest.mark.timeout(120)

# The candidate takes reports.view away from the free plan.
CANDIDATE = POLICY.replace("""  free:
    entitlements: [reports.view]""", """  free:
    entitlements: [reports.list]""")


@pytest.fixture
def data_dir(tmp_path):
    done = load_cli(tmp_path / "data", *write_sources(tmp_path / "src"))
    assert done.returncode == 0, done.stderr
    return str(tmp_path / "data")


@pytest.fixture
def candidate(tmp_path):
    path = tmp_path / "candidate.yaml"
    path.write_text(CANDIDATE)
    return str(path)


def _shadow(*args):
    return subprocess.run(JITAUTH + ["shadow"] + list(args),
                          capture_output=True, text=True, timeout=30)


def _view(account):
    return pb.AuthorizeRequest(account_id=account,
                               subject=pb.Subject(id="bob"),
                               action="reports.view")


def test_disagreements_are_counted_without_changing_decisions(
        data_dir, candidate):
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--workers", "2")
    try:
        wait_serving(server.address)
        installed = _shadow("apply", "--data", data_dir, "--policy",
                            candidate)
        time.sleep(2.5)  # workers look for a candidate once a second
        answers = []
        for _ in range(4):
            channel, authorizer = stub(server.address, own_connection=True)
            with channel:
                for account in ("globex", "acme", "initech") * 3:
                    answers.append((account, authorizer.Authorize(
                        _view(account), timeout=5)))
        assert server.terminate() == 0
    finally:
        server.stop()
    found = _shadow("--data", data_dir, "--json")
    readable = _shadow("--data", data_dir)

    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip() == "shadow candidate 1 installed"
    assert all(r.decision == pb.DECISION_ALLOW for a, r in answers
               if a == "globex")
    report = json.loads(found.stdout)
    assert (report["candidate"], report["active_revision"],
            report["evaluated"], report["disagreements"]) == (1, 1, 36, 12)
    [kind] = report["kinds"]
    assert kind["count"] == 12
    assert kind["active"] == {"reason": "allowed_by_rule",
                              "decision": "allow", "rule_id": "view"}
    assert kind["candidate"] == {"reason": "not_entitled",
                                 "decision": "deny", "rule_id": "view"}
    assert [e["account_id"] for e in kind["examples"]] == ["globex"] * 3
    assert "evaluated 36 decisions; 12 disagree (33.33 %)" in \
        readable.stdout
    assert "active ALLOW allowed_by_rule (view)  ->  candidate DENY " \
        "not_entitled (view)" in readable.stdout


def test_promote_makes_the_candidate_the_active_revision(data_dir,
                                                         candidate):
    _shadow("apply", "--data", data_dir, "--policy", candidate)

    promoted = _shadow("promote", "--data", data_dir)
    after = _shadow("--data", data_dir)
    authorizer = Authorizer(data_dir)
    try:
        answer = authorizer.authorize(AuthorizeInput(
            account_id="globex", subject_id="bob", action="reports.view"))
    finally:
        authorizer.close()

    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == "revision 2"
    assert (answer.revision, answer.reason) == (2, Reason.NOT_ENTITLED)
    assert after.returncode == 1
    assert "no shadow candidate" in after.stderr


def test_drop_removes_the_candidate(data_dir, candidate):
    _shadow("apply", "--data", data_dir, "--policy", candidate)
    again = _shadow("apply", "--data", data_dir, "--policy", candidate)

    dropped = _shadow("drop", "--data", data_dir)
    twice = _shadow("drop", "--data", data_dir)
    authorizer = Authorizer(data_dir)
    try:
        revision = authorizer.revision
    finally:
        authorizer.close()

    assert again.stdout.strip() == "shadow candidate 2 installed"
    assert dropped.stdout.strip() == "shadow candidate 2 dropped"
    assert twice.returncode == 1
    assert revision == 1


def test_invalid_candidate_installs_nothing(data_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("effect: deny", "effect: maybe"))

    refused = _shadow("apply", "--data", data_dir, "--policy", str(bad))
    missing = _shadow("apply", "--data", data_dir)
    report = _shadow("--data", data_dir)

    assert refused.returncode == 2
    assert "bad.yaml" in refused.stderr and "effect" in refused.stderr
    assert missing.returncode == 2
    assert report.returncode == 1


def test_apply_shadow_flag(data_dir, candidate):
    usage = subprocess.run(JITAUTH + ["--help"], capture_output=True,
                           text=True, timeout=30)
    if " apply " not in usage.stdout and ",apply," not in usage.stdout:
        pytest.skip("no jitauth apply command in this tree")

    done = subprocess.run(
        JITAUTH + ["apply", "--shadow", "--data", data_dir, "--policy",
                   candidate], capture_output=True, text=True, timeout=30)
    report = json.loads(_shadow("--data", data_dir, "--json").stdout)

    assert done.returncode == 0, done.stderr
    assert (report["candidate"], report["active_revision"]) == (1, 1)
