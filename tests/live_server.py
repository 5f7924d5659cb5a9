"""Running servers for the integration tests: in-process and ``jitauth serve``.

Everything binds 127.0.0.1 on port 0; every wait is bounded.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jitauth.v1 import authorizer_pb2 as pb
from jitauth.v1 import authorizer_pb2_grpc

# A small policy: reports.export holds one of two "exports" slots for 5 s,
# reports.view needs no slot (2 s), reports.delete is always denied.
POLICY = """\
plans:
  pro:
    entitlements: [reports.export, reports.view]
    limits: {exports.concurrent: 2}
  free:
    entitlements: [reports.view]
rules:
  - id: no-deletes
    effect: deny
    action: reports.delete
  - id: export
    effect: allow
    action: reports.export
    resource: {type: report}
    roles: [analyst]
    entitlement: reports.export
    when:
      - {attr: context.env, eq: prod}
    grant: {ttl: 5s, limit: exports.concurrent}
  - id: view
    effect: allow
    action: reports.view
    entitlement: reports.view
    grant: {ttl: 2s}
"""

LICENSES = """\
{"account": "acme", "plan": "pro"}
{"account": "globex", "plan": "free"}
{"account": "initech", "plan": "pro", "status": "suspended"}
"""

JITAUTH = [sys.executable, "-m", "jitauth"]


def write_sources(directory, policy=POLICY, licenses=LICENSES) -> tuple:
    """Write a policy and a licenses file; return their paths."""
    os.makedirs(directory, exist_ok=True)
    policy_path = os.path.join(directory, "policy.yaml")
    licenses_path = os.path.join(directory, "licenses.jsonl")
    with open(policy_path, "w") as f:
        f.write(textwrap.dedent(policy))
    with open(licenses_path, "w") as f:
        f.write(licenses)
    return policy_path, licenses_path


def load_cli(data_dir, policy_path, licenses_path) -> subprocess.Popen:
    """``jitauth load`` in a subprocess (LMDB must not be opened twice in
    the test process while an in-process server holds it)."""
    return subprocess.run(
        JITAUTH + ["load", "--data", str(data_dir), "--policy",
                   str(policy_path), "--licenses", str(licenses_path)],
        capture_output=True, text=True, timeout=60)


def export_request(account="acme", **overrides) -> pb.AuthorizeRequest:
    fields = dict(
        request_id=os.urandom(8).hex(),  # a repeated id would replay
        account_id=account,
        subject=pb.Subject(id="alice", roles=["analyst"]),
        action="reports.export",
        resource=pb.Resource(type="report", id="q3-revenue"),
        context={"env": "prod"},
    )
    fields.update(overrides)
    return pb.AuthorizeRequest(**fields)


def stub(target: str, *, own_connection: bool = False):
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection \
        else []
    channel = grpc.insecure_channel(target, options=options)
    return channel, authorizer_pb2_grpc.AuthorizerStub(channel)


def health_status(channel, service: str = "") -> int:
    health = health_pb2_grpc.HealthStub(channel)
    return health.Check(health_pb2.HealthCheckRequest(service=service),
                        timeout=5).status


def wait_serving(target: str, timeout: float = 30.0) -> None:
    """Wait until the server at ``target`` reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            try:
                if health_status(channel) == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError("%s not SERVING after %.0f s" % (target, timeout))


class ServeProcess:
    """``jitauth serve`` in a subprocess; ``address`` once it listens."""

    def __init__(self, *args: str, env=None):
        self.proc = subprocess.Popen(
            JITAUTH + ["serve"] + list(args), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env)
        self.stderr = ""
        line = self.proc.stdout.readline()
        match = re.search(r" on (\S+)$", line.strip())
        if match is None:
            self.stop()
            raise RuntimeError("jitauth serve did not start: %r\n%s"
                               % (line, self.stderr))
        self.address = match.group(1)

    def worker_pids(self, timeout: float = 30.0, count: int = 1) -> list:
        """PIDs of workers that logged they serve (reads stderr lines)."""
        pids = []
        deadline = time.monotonic() + timeout
        while len(pids) < count and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr += line
            match = re.search(r"worker \d+ \(pid (\d+)\) serving", line)
            if match:
                pids.append(int(match.group(1)))
        return pids

    def read_stderr_until(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr += line
            if re.search(pattern, line):
                return line
        raise TimeoutError("no %r in the server log:\n%s"
                           % (pattern, self.stderr))

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr += err
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.stderr += self.proc.communicate(timeout=20)[1]
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.stderr += self.proc.communicate(timeout=10)[1]
