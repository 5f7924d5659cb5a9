"""The JSON Schemas of ``schemas/`` accept the demo files and refuse
invalid documents, as an editor validating with them would."""

import copy
import json
import os

import jsonschema
import pytest
import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "jitauth", "demo")


def _schema(name: str) -> jsonschema.Draft202012Validator:
    with open(os.path.join(ROOT, "schemas", name)) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _yaml(name: str):
    with open(os.path.join(DEMO, name)) as f:
        return yaml.safe_load(f)


POLICY = _schema("policy.schema.json")
SUITE = _schema("policy-test.schema.json")


def test_the_demo_policy_is_valid():
    assert list(POLICY.iter_errors(_yaml("policy.yaml"))) == []


def test_the_demo_suite_is_valid():
    assert list(SUITE.iter_errors(_yaml("policy_test.yaml"))) == []


def test_the_demo_files_name_their_schema():
    with open(os.path.join(DEMO, "policy_test.yaml")) as f:
        first = f.readline().strip()
    target = first.partition("$schema=")[2]

    assert first.startswith("# yaml-language-server: $schema=")
    assert os.path.exists(os.path.join(DEMO, target))


def _change(document, path: str, value):
    """A copy of ``document`` with the value at ``a/b/0/c`` replaced
    (``...`` as the value deletes it)."""
    document = copy.deepcopy(document)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    target = document
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return document


@pytest.mark.parametrize("path, value", [
    ("rules", []),
    ("plans", ...),
    ("colour", "red"),
    ("rules/0/effect", "permit"),
    ("rules/2/action", "reports export"),
    ("rules/2/actions", ["reports.view"]),          # both action and actions
    ("rules/2/grant/ttl", "soon"),
    ("rules/2/grant/scope", "subject"),             # a scope needs a limit
    ("rules/0/grant", {"ttl": "5m"}),               # deny rules issue none
    ("rules/0/when/0", {"attr": "context.country", "in": ["KP"],
                        "eq": "KP"}),
    ("rules/0/when/0", {"attr": "country", "eq": "KP"}),
    ("rules/4/when/0/time/from", "8pm"),
    ("rules/4/when/0/time/days", "fridays"),
    ("plans/free/limits/api.concurrent", -1),
    ("rules/3/resource/id", "q*-revenue"),
])
def test_invalid_policies_are_refused(path, value):
    document = _change(_yaml("policy.yaml"), path, value)

    assert list(POLICY.iter_errors(document)) != []


@pytest.mark.parametrize("path, value", [
    ("cases", []),
    ("policy", ...),
    ("now", "tomorrow"),
    ("now", "2026-12-04T15:00:00"),                 # no zone
    ("licenses/acme/status", "paused"),
    ("licenses/acme/account", "acme"),
    ("requests/export/subject", {"roles": ["analyst"]}),
    ("cases/0/expect/reason", "unlicensed"),
    ("cases/0/expect/decision", "permit"),
    ("cases/0/expect", {"decision": "allow", "reason": "no_license"}),
    ("cases/1/expect", {"decision": "deny", "reason": "allowed_by_rule"}),
    ("cases/0/expected", {}),
    ("cases/1/request", {"account": "globex"}),     # neither full nor extends
])
def test_invalid_suites_are_refused(path, value):
    document = _change(_yaml("policy_test.yaml"), path, value)

    assert list(SUITE.iter_errors(document)) != []
