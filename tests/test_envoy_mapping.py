"""The HTTP to Authorize mapping: loading the YAML and applying it."""

import os

import pytest

from jitauth.envoy import (
    HttpRequest,
    MappingError,
    Unmapped,
    load_mapping,
    parse_mapping,
)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples", "envoy")

HEADERS = {
    "identity": {
        "account": {"header": "x-account"},
        "subject": {"header": "x-user"},
        "roles": {"header": "x-roles"},
    },
    "context": {"headers": {"x-env": "env"},
                "source_address": "source_ip",
                "principal": "peer"},
    "routes": [
        {"method": "POST", "path": "/reports/{id}/export",
         "action": "reports.export",
         "resource": {"type": "report", "id": "{id}"}},
        {"method": ["GET", "HEAD"], "path": "/files/{dir}/{name}.csv",
         "action": "files.read",
         "resource": {"type": "file", "id": "{dir}/{name}"}},
        {"path": "/ping", "action": "ping"},
    ],
}

CLAIMS = {
    "identity": {
        "account": {"claim": ["org", "id"]},
        "subject": {"claim": "sub"},
        "roles": {"claim": "scope"},
    },
    "routes": [{"path": "/x", "action": "x.do"}],
}


def http(method="POST", path="/reports/q3/export", headers=None, **kw):
    if headers is None:
        headers = {"x-account": "acme", "x-user": "alice",
                   "x-roles": "analyst, admin", "x-env": "prod"}
    return HttpRequest(method=method, path=path, headers=headers, **kw)


def test_route_table_with_placeholders():
    mapping = parse_mapping(HEADERS)

    q = mapping.question(http(source_address="10.1.2.3",
                              principal="spiffe://acme/app"))

    assert (q.account_id, q.subject_id) == ("acme", "alice")
    assert q.roles == ("analyst", "admin")
    assert (q.action, q.resource_type, q.resource_id) == (
        "reports.export", "report", "q3")
    assert q.context == {"env": "prod", "source_ip": "10.1.2.3",
                         "peer": "spiffe://acme/app"}
    assert q.request_id == ""


def test_placeholders_are_percent_decoded_and_query_ignored():
    mapping = parse_mapping(HEADERS)

    q = mapping.question(http("GET", "/files/q%203/sales.csv?x=1"))

    assert (q.action, q.resource_id) == ("files.read", "q 3/sales")


def test_method_must_match_and_any_method_when_omitted():
    mapping = parse_mapping(HEADERS)

    with pytest.raises(Unmapped) as refused:
        mapping.question(http("GET", "/reports/q3/export"))
    assert refused.value.reason == "no_route"
    assert "GET /reports/q3/export" in refused.value.message
    assert mapping.question(http("DELETE", "/ping")).action == "ping"


@pytest.mark.parametrize("path", [
    "/reports/q3/export/more", "/reports//export", "/reports/a/b/export",
    "/", "", "/REPORTS/q3/export",
])
def test_unknown_routes_are_refused(path):
    with pytest.raises(Unmapped) as refused:
        parse_mapping(HEADERS).question(http(path=path))
    assert refused.value.reason == "no_route"


def test_context_extensions_win_over_the_table():
    mapping = parse_mapping(HEADERS)

    q = mapping.question(http(context_extensions={
        "action": "billing.view", "resource_type": "invoice",
        "resource_id": "i-1"}))

    assert (q.action, q.resource_type, q.resource_id) == (
        "billing.view", "invoice", "i-1")


def test_context_extensions_can_be_turned_off():
    mapping = parse_mapping(dict(HEADERS, context_extensions=False))

    q = mapping.question(http(context_extensions={"action": "x"}))

    assert q.action == "reports.export"


@pytest.mark.parametrize("missing", ["x-account", "x-user"])
def test_a_missing_identity_header_is_refused(missing):
    headers = {"x-account": "acme", "x-user": "alice"}
    del headers[missing]

    with pytest.raises(Unmapped) as refused:
        parse_mapping(HEADERS).question(http(headers=headers))

    assert refused.value.reason == "missing_identity"
    assert missing in refused.value.message


def test_an_empty_identity_header_is_refused():
    with pytest.raises(Unmapped) as refused:
        parse_mapping(HEADERS).question(http(headers={
            "x-account": "", "x-user": "alice"}))
    assert refused.value.reason == "missing_identity"


def test_roles_are_optional():
    q = parse_mapping(HEADERS).question(http(headers={
        "x-account": "acme", "x-user": "alice"}))
    assert q.roles == ()


def test_identity_from_jwt_claims():
    mapping = parse_mapping(CLAIMS)

    q = mapping.question(http(path="/x", headers={}, jwt_payload={
        "org": {"id": "acme"}, "sub": "alice", "scope": "read write"}))

    assert (q.account_id, q.subject_id, q.roles) == (
        "acme", "alice", ("read", "write"))


@pytest.mark.parametrize("number", [2.0**53 + 2, 1.5, -2.0**60])
def test_claims_a_double_cannot_hold_exactly_are_refused(number):
    mapping = parse_mapping(CLAIMS)

    with pytest.raises(Unmapped) as info:
        mapping.question(http(path="/x", headers={}, jwt_payload={
            "org": {"id": number}, "sub": "alice"}))

    assert info.value.reason == "invalid_identity"


def test_integral_claims_are_accepted_as_ids():
    q = parse_mapping(CLAIMS).question(http(path="/x", headers={},
                                            jwt_payload={
        "org": {"id": 42.0}, "sub": "alice"}))
    assert q.account_id == "42"


@pytest.mark.parametrize("payload, reason", [
    (None, "missing_identity"),
    ({}, "missing_identity"),
    ({"org": {"id": "acme"}}, "missing_identity"),
    ("a string", "invalid_identity"),
    (["a", "list"], "invalid_identity"),
    ({"org": "acme", "sub": "alice"}, "invalid_identity"),
    ({"org": {"id": ["acme"]}, "sub": "alice"}, "invalid_identity"),
    ({"org": {"id": {"x": 1}}, "sub": "alice"}, "invalid_identity"),
    ({"org": {"id": True}, "sub": "alice"}, "invalid_identity"),
    ({"org": {"id": 1.5}, "sub": "alice"}, "invalid_identity"),
    ({"org": {"id": None}, "sub": "alice"}, "invalid_identity"),
    ({"org": {"id": "acme"}, "sub": "alice", "scope": [1, 2]},
     "invalid_identity"),
    ({"org": {"id": "acme"}, "sub": "alice", "scope": {"a": 1}},
     "invalid_identity"),
])
def test_malformed_jwt_metadata_is_refused(payload, reason):
    with pytest.raises(Unmapped) as refused:
        parse_mapping(CLAIMS).question(http(path="/x", headers={},
                                            jwt_payload=payload))
    assert refused.value.reason == reason


def test_a_header_never_stands_in_for_a_claim():
    # The client chose this header: it must not become the identity.
    with pytest.raises(Unmapped) as refused:
        parse_mapping(CLAIMS).question(http(path="/x", headers={
            "sub": "alice", "org": "acme"}))
    assert refused.value.reason == "missing_identity"


def test_invalid_utf8_in_a_path_parameter_is_refused():
    with pytest.raises(Unmapped) as refused:
        parse_mapping(HEADERS).question(http(path="/reports/%ff/export"))
    assert refused.value.reason == "invalid_request"


def test_the_examples_load():
    mapping = load_mapping(os.path.join(EXAMPLES, "mapping.yaml"))
    headers = load_mapping(os.path.join(EXAMPLES, "mapping-headers.yaml"))

    q = mapping.question(http("POST", "/reports/q3-revenue/export",
                              headers={"x-env": "prod"},
                              jwt_payload={"org": "acme", "sub": "alice",
                                           "roles": ["analyst"]}))
    assert (q.account_id, q.action, q.resource_id) == (
        "acme", "reports.export", "q3-revenue")
    assert headers.account.header
    assert mapping.keep_header == "x-jitauth-keep-grant"
    assert parse_mapping(dict(CLAIMS, completion={"keep_header": ""})) \
        .keep_header == ""


BAD = [
    ([], "mapping: must be a mapping"),
    ({"routes": []}, "identity: is required"),
    ({"identity": {"account": {"header": "a"}}}, "identity.subject: is "
     "required"),
    ({"identity": {"account": {"header": "a", "claim": "b"},
                   "subject": {"header": "s"}}},
     "identity.account: needs exactly one of header and claim"),
    ({"identity": {"account": {"header": "bad header"},
                   "subject": {"header": "s"}}},
     "identity.account.header: not a valid header name"),
    ({"identity": {"account": {"claim": []}, "subject": {"header": "s"}}},
     "identity.account.claim: must be a claim name"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"},
                   "group": {}}}, "identity.group: unknown key"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routez": []}, "mapping.routez: unknown key"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "reports", "action": "a"}]},
     "routes[0].path: is required and must start with /"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "/r/{id}/{id}", "action": "a"}]},
     "routes[0].path: placeholder {id} used twice"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "/r/{id", "action": "a"}]},
     "routes[0].path: a brace"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "/r/{id}", "action": "a.{name}"}]},
     "routes[0].action: {name} is not a placeholder of the path"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "/r", "action": "a", "method": "get"}]},
     "routes[0].method: must be an upper-case HTTP method"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "/r"}]}, "routes[0].action: is required"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "context_extensions": False},
     "routes: no routes and context_extensions off"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "context": {"headers": {"x-env": "bad key!"}}},
     "context.headers[x-env]: not a valid context key"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "upstream_headers": {"grant": "x-g"}},
     "upstream_headers.grant: unknown key"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "completion": {"keep_header": "no good"}},
     "completion.keep_header: not a valid header name"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "routes": [{"path": "/f/{name}.{ext}", "action": "a"}]},
     "routes[0].path: at most one {placeholder} per segment"),
    ({"identity": {"account": {"header": "a"}, "subject": {"header": "s"}},
      "context": {"headers": {"x-src": "ip"}, "source_address": "ip"}},
     "context.source_address: context key 'ip' is also filled from a "
     "header"),
]


@pytest.mark.parametrize("data, message", BAD)
def test_bad_mappings_name_the_key(data, message):
    with pytest.raises(MappingError) as error:
        parse_mapping(data, origin="m.yaml")
    assert str(error.value).startswith("m.yaml: " + message), error.value


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("identity: [unclosed\n")

    with pytest.raises(MappingError) as error:
        load_mapping(str(path))

    assert str(path) in str(error.value)
