"""The README's quickstart: ``jitauth serve --demo`` and its four accounts."""

import time

import pytest
from live_server import ServeProcess, export_request, stub, wait_serving

from jitauth.v1 import authorizer_pb2 as pb

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("quickstart") / "jitauth-demo"
    process = ServeProcess("--demo", "--data", str(data), "--listen",
                           "127.0.0.1:0", "--workers", "2")
    try:
        wait_serving(process.address)
        channel, client = stub(process.address)
        with channel:
            yield client
    finally:
        process.stop()


def test_acme_analyst_may_export_for_at_most_a_minute(demo):
    before = time.time()

    response = demo.Authorize(export_request("acme"), timeout=5)

    assert response.decision == pb.DECISION_ALLOW
    assert response.reason == pb.REASON_ALLOWED_BY_RULE
    assert response.grant.id
    lifetime = response.grant.expires_at.ToMilliseconds() / 1000 - before
    assert 0 < lifetime <= 61
    done = demo.Complete(pb.CompleteRequest(grant_id=response.grant.id),
                         timeout=5)
    assert done.state == pb.GRANT_STATE_COMPLETED


@pytest.mark.parametrize("account, reason", [
    ("globex", pb.REASON_NOT_ENTITLED),
    ("initech", pb.REASON_LICENSE_INACTIVE),
    ("no-such-account", pb.REASON_NO_LICENSE),
])
def test_the_other_accounts_are_denied(demo, account, reason):
    response = demo.Authorize(export_request(account), timeout=5)

    assert response.decision == pb.DECISION_DENY
    assert response.reason == reason
    assert not response.HasField("grant")
