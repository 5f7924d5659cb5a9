"""``jitauth test``: policy test suites, passing, failing and invalid."""

import os
import subprocess
import sys
import textwrap

import pytest
from live_server import JITAUTH, POLICY

import jitauth.authorizer
from jitauth import policytest
from jitauth.reference import ReferenceMatcher

pytestmark = pytest.mark.timeout(120)

DEMO = os.path.join(os.path.dirname(policytest.__file__), "demo")

SUITE = """\
policy: policy.yaml
now: "2026-12-04T15:00:00Z"
licenses:
  acme: {plan: pro}
  globex: {plan: free}
  nobody: null
requests:
  export:
    account: acme
    subject: {id: alice, roles: [analyst]}
    action: reports.export
    resource: {type: report, id: q3}
    context: {env: prod}
cases:
  - name: analysts export
    request: export
    expect: {decision: allow, reason: allowed_by_rule, rule: export}
  - name: the free plan does not export
    request: {extends: export, account: globex}
    expect: {decision: deny, reason: not_entitled, rule: export}
  - name: no license
    request: {extends: export, account: nobody}
    expect: {decision: deny, reason: no_license, rule: null}
  - name: deletes are denied
    request: {extends: export, action: reports.delete}
    expect: {decision: deny, reason: denied_by_rule, rule: no-deletes}
"""


def run_cli(*args, timeout=60):
    return subprocess.run(JITAUTH + list(args), capture_output=True,
                          text=True, timeout=timeout)


def write_suite(directory, suite=SUITE, policy=POLICY,
                name="policy_test.yaml") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(textwrap.dedent(policy))
    (directory / name).write_text(suite)
    return str(directory / name)


def test_the_demo_suite_passes():
    done = run_cli("test", DEMO)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  acme's analyst exports a report" in done.stdout
    assert "FAIL" not in done.stdout
    assert done.stdout.splitlines()[-1] == "28 passed, 0 failed"
    assert done.stderr == ""


def test_a_suite_passes_case_by_case(tmp_path):
    path = write_suite(tmp_path)

    done = run_cli("test", path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "%s: 4 cases, policy %s" % (path, tmp_path / "policy.yaml"),
        "  PASS  analysts export",
        "  PASS  the free plan does not export",
        "  PASS  no license",
        "  PASS  deletes are denied",
        "4 passed, 0 failed",
    ]


@pytest.mark.parametrize("change, problem", [
    (("reason: not_entitled, rule: export",
      "reason: no_matching_rule, rule: export"),
     "expected deny no_matching_rule (rule export), got deny not_entitled "
     "(rule export)"),
    (("reason: no_license, rule: null", "reason: no_license, rule: view"),
     "expected deny no_license (rule view), got deny no_license "
     "(rule none)"),
    (("decision: allow, reason: allowed_by_rule, rule: export}",
      "decision: deny, reason: denied_by_rule, rule: export}"),
     "expected deny denied_by_rule (rule export), got allow "
     "allowed_by_rule (rule export)"),
])
def test_a_failing_case_exits_1_and_says_why(tmp_path, change, problem):
    path = write_suite(tmp_path, SUITE.replace(*change))

    done = run_cli("test", path)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and problem in done.stdout, done.stdout
    assert done.stdout.count("PASS") == 3
    assert done.stdout.splitlines()[-1] == "3 passed, 1 failed"


def _invalid(**replace) -> str:
    suite = SUITE
    for old, new in replace.values():
        assert old in suite
        suite = suite.replace(old, new)
    return suite


@pytest.mark.parametrize("suite, error", [
    (_invalid(r=("rule: no-deletes", "rule: no-delete")),
     "policy_test.yaml:26: cases[3].expect.rule: rule 'no-delete' is not "
     "in the policy (rules: no-deletes, export, view)"),
    (_invalid(a=("account: globex}", "account: globx}")),
     "policy_test.yaml:19: cases[1].request.account: no license named "
     "'globx'"),
    (_invalid(r=("request: export\n", "request: exprot\n")),
     "policy_test.yaml:16: cases[0].request: no request named 'exprot'"),
    (_invalid(e=("{extends: export, account: nobody}",
                 "{extends: exports, account: nobody}")),
     "policy_test.yaml:22: cases[2].request.extends: no request named "
     "'exports'"),
    (_invalid(r=("reason: no_license", "reason: unlicensed")),
     "policy_test.yaml:23: cases[2].expect.reason: 'unlicensed' is not a "
     "reason"),
    (_invalid(d=("decision: deny, reason: denied_by_rule",
                 "decision: allow, reason: denied_by_rule")),
     "policy_test.yaml:26: cases[3].expect.reason: reason denied_by_rule "
     "cannot come with decision allow"),
    (_invalid(p=("plan: free", "plan: gold")),
     "policy_test.yaml:5: licenses.globex.plan: plan 'gold' is not "
     "defined in the policy"),
    (_invalid(n=('now: "2026-12-04T15:00:00Z"\n', "")),
     "policy_test.yaml:14: cases[0]: no now: give one for the suite or "
     "the case"),
    (_invalid(t=('now: "2026-12-04T15:00:00Z"', 'now: "2026-12-04 15:00"')),
     "policy_test.yaml:2: now: '2026-12-04 15:00' is not an RFC 3339"),
    (_invalid(f=("    expect: {decision: allow,",
                 "    expected: {decision: allow,")),
     "policy_test.yaml:17: cases[0].expected: unknown field"),
    (_invalid(s=("subject: {id: alice, roles: [analyst]}",
                 "subject: {roles: [analyst]}")),
     "policy_test.yaml:10: requests.export.subject: a subject needs an id"),
    (_invalid(c=("  - name: no license\n", "  - name: analysts export\n")),
     "policy_test.yaml:21: cases[2]: case name 'analysts export' is "
     "already used at line 15"),
    (_invalid(y=("cases:\n", "cases: [\n")), "policy_test.yaml:15: yaml"),
    (_invalid(p=("policy: policy.yaml", "policy: nowhere.yaml")),
     "policy_test.yaml:1: policy: no policy file"),
])
def test_an_invalid_suite_exits_2_naming_file_line_and_field(
        tmp_path, suite, error):
    path = write_suite(tmp_path, suite)

    done = run_cli("test", path)

    assert done.returncode == 2, done.stdout + done.stderr
    assert error in done.stdout, done.stdout
    assert "PASS" not in done.stdout


def test_an_invalid_policy_exits_2_with_the_policys_error(tmp_path):
    path = write_suite(tmp_path, policy=POLICY.replace("ttl: 5s",
                                                       "ttl: soon"))

    done = run_cli("test", path)

    assert done.returncode == 2
    assert "policy.yaml:19: rules[1].grant.ttl: must be a duration" in \
        done.stdout


def test_a_directory_runs_every_suite_and_invalid_wins(tmp_path):
    write_suite(tmp_path / "good")
    write_suite(tmp_path / "failing", SUITE.replace(
        "reason: no_license, rule: null", "reason: no_license, rule: view"))
    write_suite(tmp_path / "invalid", SUITE.replace("plan: free",
                                                    "plan: gold"))
    write_suite(tmp_path / "other", "not a suite", name="notes.yaml")

    done = run_cli("test", str(tmp_path))

    assert done.returncode == 2
    assert done.stdout.count("PASS") == 7
    assert done.stdout.count("FAIL") == 1
    assert "notes.yaml" not in done.stdout
    assert done.stdout.splitlines()[-1] == \
        "7 passed, 1 failed, invalid suites: not run"


def test_a_directory_without_suites_is_an_error(tmp_path):
    done = run_cli("test", str(tmp_path))

    assert done.returncode == 2
    assert "no test suites" in done.stdout


def test_the_matchers_disagreeing_fails_the_case(tmp_path, monkeypatch,
                                                 capsys):
    """A reference matcher that answers no_matching_rule for acme's
    exports: the case fails naming both answers, whatever it expects."""

    class Skewed(ReferenceMatcher):
        def match(self, record, account_id, *args):
            found = super().match(record, account_id, *args)
            if account_id == "acme" and found[0] == 1:
                return (8, -1, -1)
            return found

    monkeypatch.setattr(jitauth.authorizer, "ReferenceMatcher", Skewed)
    path = write_suite(tmp_path)

    status = policytest.run([path], out=sys.stdout)

    printed = capsys.readouterr().out
    assert status == 1
    assert "FAIL  analysts export" in printed
    assert ("the matchers disagree: compiled allow allowed_by_rule (rule "
            "export), reference deny no_matching_rule (rule none)"
            in printed)
    assert printed.count("PASS") == 3
