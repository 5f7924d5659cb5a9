"""AuthorizeBatch through a real server: the same decisions as Authorize,
one error per malformed item, limits on the batch as a whole."""

import grpc
import pytest
from live_server import export_request, stub, write_sources

from jitauth.limits import MAX_BATCH_ITEMS
from jitauth.loader import load
from jitauth.server import Service
from jitauth.v1 import authorizer_pb2 as pb


@pytest.fixture(scope="module", params=["compiled", "reference"])
def client(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    policy_path, licenses_path = write_sources(tmp / "source")
    load(str(tmp / "data"), policy_path, [licenses_path])
    service = Service(str(tmp / "data"), matcher=request.param)
    service.start()
    target = "127.0.0.1:%d" % service.port
    channel, client = stub(target)
    client.target = target
    yield client
    channel.close()
    service.stop(0)


def batch(client, requests):
    return client.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=requests),
                                 timeout=10).results


def test_each_item_is_decided_as_authorize_would(client):
    requests = [
        export_request("acme", action="reports.view"),
        export_request("globex"),
        export_request("initech"),
        export_request("nobody"),
        export_request("acme", action="reports.delete"),
    ]

    singles = [client.Authorize(r, timeout=5) for r in requests]
    results = batch(client, requests)

    assert [r.WhichOneof("result") for r in results] == ["response"] * 5
    assert [(r.response.decision, r.response.reason, r.response.rule_id)
            for r in results] == [(s.decision, s.reason, s.rule_id)
                                  for s in singles]
    # the same request_id while its grant lives: the first answer again
    assert results[0].response.replayed
    assert results[0].response.grant.id == singles[0].grant.id


def test_a_malformed_item_fails_alone(client):
    results = batch(client, [
        export_request("acme", action="reports.view"),
        pb.AuthorizeRequest(account_id="acme", action="reports.view"),
        export_request("acme", context={"k": "v" * 5000}),
        export_request("globex"),
    ])

    kinds = [r.WhichOneof("result") for r in results]
    assert kinds == ["response", "error", "error", "response"]
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[1].error.message.startswith("subject.id:")
    assert results[2].error.message.startswith('context["k"]:')
    assert results[3].response.reason == pb.REASON_NOT_ENTITLED


def test_seats_are_counted_across_the_items(client):
    requests = [export_request("acme") for _ in range(4)]

    reasons = [r.response.reason for r in batch(client, requests)]

    assert reasons.count(pb.REASON_ALLOWED_BY_RULE) <= 2
    assert reasons.count(pb.REASON_CONCURRENCY_LIMIT_REACHED) >= 2


def test_too_many_items_is_refused_whole(client):
    requests = [export_request("globex")] * (MAX_BATCH_ITEMS + 1)

    with pytest.raises(grpc.RpcError) as caught:
        batch(client, requests)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("requests:")


def test_invalid_utf8_fails_its_item_alone(client):
    raw = bytearray(pb.AuthorizeBatchRequest(requests=[
        export_request("globex"), export_request("acme")],
    ).SerializeToString())
    at = raw.rindex(b"alice")
    raw[at:at + 2] = b"\xff\xfe"

    channel = grpc.insecure_channel(client.target)
    try:
        results = channel.unary_unary(
            "/jitauth.v1.Authorizer/AuthorizeBatch",
            request_serializer=None,
            response_deserializer=pb.AuthorizeBatchResponse.FromString,
        )(bytes(raw), timeout=5).results
    finally:
        channel.close()

    assert results[0].response.reason == pb.REASON_NOT_ENTITLED
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results[1].error.message == \
        "requests[1].subject.id: not valid UTF-8"


def test_a_broken_batch_frame_is_refused_whole(client):
    channel = grpc.insecure_channel(client.target)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(
                "/jitauth.v1.Authorizer/AuthorizeBatch",
                request_serializer=None,
                response_deserializer=pb.AuthorizeBatchResponse.FromString,
            )(b"\x0a\xff\xff\x03abc", timeout=5)
    finally:
        channel.close()

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request: not a valid")


def test_units_beyond_the_maximum_are_refused_not_truncated(client):
    request = export_request("acme", action="reports.view",
                             units=2**33 + 1)

    with pytest.raises(grpc.RpcError) as caught:
        client.Authorize(request, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("units:")
