"""The ``jitauth`` command, run as a subprocess."""

import json
import os
import subprocess

import pytest
from live_server import (
    JITAUTH,
    POLICY,
    ServeProcess,
    wait_serving,
    write_sources,
)

pytestmark = pytest.mark.timeout(120)


def run(*args, timeout=60):
    return subprocess.run(JITAUTH + list(args), capture_output=True,
                          text=True, timeout=timeout)


def test_load_prints_the_new_revision(tmp_path):
    policy_path, licenses_path = write_sources(tmp_path / "source")
    data = str(tmp_path / "data")

    first = run("load", "--data", data, "--policy", policy_path,
                "--licenses", licenses_path)
    second = run("load", "--data", data, "--policy", policy_path,
                 "--licenses", licenses_path)

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "1"
    assert second.stdout.strip() == "2"


@pytest.mark.parametrize("policy, licenses, where", [
    (POLICY.replace("ttl: 5s", "ttl: soon"), None, "policy.yaml:"),
    (POLICY, '{"account": "acme", "plan": "pro"}\n{"account": 7}\n',
     "licenses.jsonl:2"),
])
def test_load_errors_exit_2_and_write_nothing(tmp_path, policy, licenses,
                                              where):
    good = write_sources(tmp_path / "good")
    data = str(tmp_path / "data")
    assert run("load", "--data", data, "--policy", good[0], "--licenses",
               good[1]).returncode == 0
    bad = write_sources(tmp_path / "bad", policy,
                        licenses or open(good[1]).read())

    done = run("load", "--data", data, "--policy", bad[0], "--licenses",
               bad[1])

    assert done.returncode == 2
    assert done.stdout == ""
    assert where in done.stderr
    again = run("load", "--data", data, "--policy", good[0], "--licenses",
                good[1])
    assert again.stdout.strip() == "2"


def test_load_missing_file_fails(tmp_path):
    done = run("load", "--data", str(tmp_path / "data"), "--policy",
               str(tmp_path / "absent.yaml"), "--licenses",
               str(tmp_path / "absent.jsonl"))

    assert done.returncode == 2
    assert "absent.yaml" in done.stderr
    assert not os.path.exists(tmp_path / "data" / "data.mdb")


def test_usage_errors_exit_2(tmp_path):
    assert run().returncode == 2
    assert run("serve", "--listen", "127.0.0.1:0").returncode == 2
    assert run("authorize", "--account", "a").returncode == 2
    assert run("authorize", "--target", "127.0.0.1:1", "--account", "a",
               "--subject", "s", "--action", "x", "--context",
               "no-equals-sign").returncode == 2


def test_serve_refuses_a_taken_address(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = run("serve", "--data", str(tmp_path), "--listen",
                   "127.0.0.1:%d" % port)

    assert done.returncode == 2
    assert "cannot listen" in done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    policy_path, licenses_path = write_sources(tmp_path / "source")
    data = str(tmp_path / "data")
    assert run("load", "--data", data, "--policy", policy_path,
               "--licenses", licenses_path).returncode == 0
    process = ServeProcess("--data", data, "--listen", "127.0.0.1:0")
    try:
        wait_serving(process.address)
        yield process.address
    finally:
        process.stop()


EXPORT = ["--subject", "alice", "--role", "analyst", "--action",
          "reports.export", "--resource-type", "report", "--resource-id",
          "q3", "--context", "env=prod"]


def test_authorize_allow_then_complete(server):
    allowed = run("authorize", "--target", server, "--account", "acme",
                  *EXPORT, "--json")

    assert allowed.returncode == 0, allowed.stderr
    response = json.loads(allowed.stdout)
    assert response["decision"] == "DECISION_ALLOW"
    assert response["reason"] == "REASON_ALLOWED_BY_RULE"
    assert response["rule_id"] == "export"
    grant_id = response["grant"]["id"]

    done = run("complete", "--target", server, grant_id, "--outcome",
               "cancelled")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("COMPLETED")
    assert "outcome:  cancelled" in done.stdout

    again = run("complete", "--target", server, grant_id, "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["already_ended"] is True


def test_authorize_readable_output(server):
    allowed = run("authorize", "--target", server, "--account", "acme",
                  *EXPORT)

    assert allowed.returncode == 0
    lines = allowed.stdout.splitlines()
    assert lines[0] == "ALLOW (allowed_by_rule)"
    assert any(line.startswith("  grant:") for line in lines)
    assert any(line.startswith("  expires:") for line in lines)


def test_authorize_deny_exits_1(server):
    denied = run("authorize", "--target", server, "--account", "globex",
                 *EXPORT)

    assert denied.returncode == 1
    assert denied.stdout.startswith("DENY (not_entitled)")


def test_rpc_errors_exit_2(server):
    invalid = run("authorize", "--target", server, "--account", "",
                  *EXPORT)
    missing = run("complete", "--target", server, "ab" * 16)

    assert invalid.returncode == 2
    assert "INVALID_ARGUMENT: account_id" in invalid.stderr
    assert missing.returncode == 2
    assert "NOT_FOUND" in missing.stderr


def test_unreachable_server_exits_2():
    done = run("authorize", "--target", "127.0.0.1:1", "--timeout", "1",
               "--account", "acme", *EXPORT)

    assert done.returncode == 2
    assert "UNAVAILABLE" in done.stderr or "DEADLINE" in done.stderr
