"""Clients in other languages against a live server: examples/node (the
Node.js client) and examples/reflection (a generic client that reads the
message types from server reflection, no stubs)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from live_server import stub, write_sources

from jitauth.authorizer import Authorizer
from jitauth.loader import load
from jitauth.server import Service
from jitauth.v1 import authorizer_pb2 as pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "examples", "node", "client.js")
MODULES = os.path.join(ROOT, "examples", "node", "node_modules")
REFLECTION = os.path.join(ROOT, "examples", "reflection", "call.py")
NODE = shutil.which("node")

needs_node = pytest.mark.skipif(
    NODE is None, reason="Node.js is not installed: the Node.js client "
    "example cannot run here")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    policy_path, licenses_path = write_sources(root / "source")
    load(str(root / "data"), policy_path, [licenses_path])
    service = Service(str(root / "data"), open_authorizer=lambda path, m:
                      Authorizer(path, matcher=m))
    service.start()
    yield "127.0.0.1:%d" % service.port
    service.stop(0)


def run(target, *args):
    if not os.path.isdir(os.path.join(MODULES, "@grpc", "grpc-js")):
        pytest.fail("examples/node has no node_modules: run .ci/setup test "
                    "(npm ci in examples/node)")
    out = subprocess.run(
        [NODE, CLIENT, "--target", target, *args], capture_output=True,
        text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


EXPORT = ["--subject", "alice", "--role", "analyst", "--action",
          "reports.export", "--resource-type", "report", "--resource-id",
          "q3", "--context", "env=prod"]


@needs_node
def test_authorize_work_complete(target):
    code, out, err = run(target, "--account", "acme", *EXPORT)

    assert code == 0, err
    answer = json.loads(out)
    assert answer["decision"]["decision"] == "DECISION_ALLOW"
    assert answer["decision"]["reason"] == "REASON_ALLOWED_BY_RULE"
    grant_id = answer["decision"]["grant"]["id"]
    assert answer["completion"]["grant_id"] == grant_id
    assert answer["completion"]["state"] == "GRANT_STATE_COMPLETED"
    assert answer["completion"]["already_ended"] is False

    channel, client = stub(target)
    with channel:
        again = client.Complete(pb.CompleteRequest(grant_id=grant_id),
                                timeout=5)
    assert again.already_ended


@needs_node
def test_a_deny_exits_1(target):
    code, out, err = run(target, "--account", "globex", *EXPORT)

    assert code == 1, err
    assert json.loads(out)["decision"]["reason"] == "REASON_NOT_ENTITLED"


@needs_node
def test_an_rpc_error_names_the_status(target):
    code, out, err = run(target, "--account", "acme", "--subject", "alice",
                         "--action", "x" * 300)

    assert code == 2
    assert "INVALID_ARGUMENT" in err
    assert "action" in err


@needs_node
def test_a_failed_outcome_is_reported(target):
    code, out, err = run(target, "--account", "acme", "--outcome",
                         "failure", *EXPORT)

    assert code == 0, err
    assert json.loads(out)["completion"]["outcome"] == "OUTCOME_FAILURE"


@needs_node
def test_no_server_is_unavailable():
    code, _, err = run("127.0.0.1:1", "--account", "acme", "--timeout",
                       "2", *EXPORT)

    assert code == 2
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def reflect(target, *args):
    out = subprocess.run([sys.executable, REFLECTION, target, *args],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


def test_reflection_client_lists_and_calls(target):
    code, out, err = reflect(target, "list")
    assert code == 0, err
    assert "jitauth.v1.Authorizer" in out.split()

    question = {"account_id": "acme", "action": "reports.export",
                "subject": {"id": "alice", "roles": ["analyst"]},
                "resource": {"type": "report", "id": "q3"},
                "context": {"env": "prod"}}
    code, out, err = reflect(target, "jitauth.v1.Authorizer/Authorize",
                             json.dumps(question))
    assert code == 0, err
    answer = json.loads(out)
    assert answer["decision"] == "DECISION_ALLOW"

    code, out, err = reflect(target, "jitauth.v1.Authorizer/Complete",
                             json.dumps({"grant_id": answer["grant"]["id"]}))
    assert code == 0, err
    assert json.loads(out)["state"] == "GRANT_STATE_COMPLETED"


def test_reflection_client_reports_rpc_errors(target):
    code, _, err = reflect(target, "jitauth.v1.Authorizer/Complete",
                           json.dumps({"grant_id": "0" * 32}))

    assert code == 2
    assert "NOT_FOUND" in err
