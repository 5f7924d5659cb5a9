"""The Prometheus endpoint of ``jitauth serve --metrics-listen``."""

import re
import subprocess
import urllib.request

import pytest
from live_server import (
    JITAUTH,
    POLICY,
    ServeProcess,
    export_request,
    load_cli,
    stub,
    wait_serving,
    write_sources,
)

from jitauth.v1 import authorizer_pb2 as pb

pytestmark = pytest.mark.timeout(120)

_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


@pytest.fixture
def data_dir(tmp_path):
    done = load_cli(tmp_path / "data", *write_sources(tmp_path / "src"))
    assert done.returncode == 0, done.stderr
    return str(tmp_path / "data")


def scrape(address: str) -> dict:
    """``{name{labels}: value}`` of every sample on /metrics."""
    with urllib.request.urlopen("http://%s/metrics" % address,
                                timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = match.group(2) or ""
            samples[match.group(1) + labels] = float(match.group(3))
    return samples


def test_decisions_by_reason_latency_and_store_figures(data_dir):
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--workers", "2", "--metrics-listen",
                          "127.0.0.1:0")
    try:
        metrics_line = server.proc.stdout.readline()
        metrics_address = metrics_line.split(" on ")[1].strip()
        wait_serving(server.address)
        for n in range(3):
            channel, authorizer = stub(server.address, own_connection=True)
            with channel:
                if n < 2:
                    authorizer.Authorize(export_request(), timeout=5)
                authorizer.Authorize(export_request("nobody"), timeout=5)
        channel, authorizer = stub(server.address)
        with channel:
            limited = authorizer.Authorize(export_request(), timeout=5)
            authorizer.Authorize(export_request("initech"), timeout=5)
        figures = scrape(metrics_address)
        assert server.terminate() == 0
    finally:
        server.stop()

    assert metrics_line.startswith("jitauth metrics on 127.0.0.1:")
    assert limited.reason == pb.REASON_CONCURRENCY_LIMIT_REACHED
    decisions = {k: v for k, v in figures.items()
                 if k.startswith("jitauth_decisions_total")}
    assert decisions == {
        'jitauth_decisions_total{decision="allow",'
        'reason="allowed_by_rule"}': 2.0,
        'jitauth_decisions_total{decision="deny",'
        'reason="no_license"}': 3.0,
        'jitauth_decisions_total{decision="deny",'
        'reason="concurrency_limit_reached"}': 1.0,
        'jitauth_decisions_total{decision="deny",'
        'reason="license_inactive"}': 1.0,
    }
    assert figures['jitauth_request_duration_seconds_count'
                   '{method="Authorize"}'] == 7.0
    assert figures['jitauth_request_duration_seconds_bucket'
                   '{le="1.0",method="Authorize"}'] == 7.0
    assert figures["jitauth_live_grants"] == 2.0
    assert figures["jitauth_policy_revision"] == 1.0
    assert figures["jitauth_shadow_candidate"] == 0.0
    assert figures["jitauth_audit_dropped_total"] == 0.0
    assert figures["jitauth_audit_backlog"] >= 0.0
    assert figures["jitauth_audit_last_sequence"] >= 2.0


def test_shadow_candidate_figure(data_dir, tmp_path):
    policy = tmp_path / "candidate.yaml"
    policy.write_text(POLICY)
    subprocess.run(JITAUTH + ["shadow", "apply", "--data", data_dir,
                              "--policy", str(policy)],
                   check=True, capture_output=True, timeout=30)
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--metrics-listen", "127.0.0.1:0")
    try:
        metrics_address = server.proc.stdout.readline().split(" on ")[1] \
            .strip()
        wait_serving(server.address)
        figures = scrape(metrics_address)
    finally:
        server.stop()

    assert figures["jitauth_shadow_candidate"] == 1.0


def test_metrics_address_in_use_exits_2(data_dir):
    first = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                         "--metrics-listen", "127.0.0.1:0")
    try:
        taken = first.proc.stdout.readline().split(" on ")[1].strip()
        second = subprocess.run(
            JITAUTH + ["serve", "--data", data_dir, "--listen",
                       "127.0.0.1:0", "--metrics-listen", taken],
            capture_output=True, text=True, timeout=30)
    finally:
        first.stop()

    assert second.returncode == 2
    assert "error:" in second.stderr


def test_envoy_check_decisions_are_counted(data_dir):
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2 as ext
    from envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc

    mapping = __file__.rsplit("/tests/", 1)[0] + \
        "/examples/envoy/mapping-headers.yaml"
    server = ServeProcess("--data", data_dir, "--listen", "127.0.0.1:0",
                          "--envoy-config", mapping, "--metrics-listen",
                          "127.0.0.1:0")
    try:
        metrics_address = server.proc.stdout.readline().split(" on ")[1] \
            .strip()
        wait_serving(server.address)
        with grpc.insecure_channel(server.address) as channel:
            check = ext_grpc.AuthorizationStub(channel)
            for account in ("acme", "nobody"):
                request = ext.CheckRequest()
                http = request.attributes.request.http
                http.method, http.path = "POST", "/reports/q3/export"
                http.headers.update({
                    "x-jitauth-account": account,
                    "x-jitauth-subject": "alice",
                    "x-jitauth-roles": "analyst", "x-env": "prod"})
                check.Check(request, timeout=5)
        figures = scrape(metrics_address)
        assert server.terminate() == 0
    finally:
        server.stop()

    assert figures['jitauth_decisions_total{decision="allow",'
                   'reason="allowed_by_rule"}'] == 1.0
    assert figures['jitauth_decisions_total{decision="deny",'
                   'reason="no_license"}'] == 1.0
