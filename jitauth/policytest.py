"""``jitauth test``: policy test suites, run against both matchers.

A suite is a YAML file written next to the policy it tests (its name ends
in ``_test.yaml``).  It names licenses and requests, fixes the time, and
lists cases, each a request with the decision, reason and (optionally) rule
it must get::

    policy: policy.yaml                # relative to the suite
    now: "2026-12-04T15:00:00Z"
    licenses:
      acme: {plan: enterprise}         # the key is the account id
      nobody: null                     # an account without a license
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
        expect: {decision: allow, reason: allowed_by_rule,
                 rule: export-reports}
      - name: without a license
        request: {extends: export, account: nobody}
        expect: {decision: deny, reason: no_license}

Every case is decided twice in-process, over a temporary LMDB store holding
the policy and the suite's licenses: by the compiled matcher and by the
pure-Python reference matcher.  A case passes when both give the expected
answer.  Cases are independent dry runs: no grant is issued, so limits
count no live grants (a limit of 0 still refuses).

Accounts must be declared under ``licenses`` (``null`` for none), so a
misspelt account is an error rather than a silent ``no_license``.
"""

import datetime
import os
import tempfile
from dataclasses import dataclass, field

import yaml

from jitauth.authorizer import Authorizer, validate
from jitauth.licenses import (
    _license,
    _LineError,
    _rfc3339_ms,
    encode_license,
)
from jitauth.model import AuthorizeInput, InvalidInput, Reason
from jitauth.policy import (
    SourceError,
    _Loader,
    _Map,
    _mapping,
    _Seq,
    _Where,
    compile_policy,
    read_source,
)
from jitauth.revisions import compiled_bytes, install
from jitauth.store import Store

SUITE_SUFFIXES = ("_test.yaml", "_test.yml")

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

_SUITE_FIELDS = ("name", "description", "policy", "now", "licenses",
                 "requests", "cases")
_REQUEST_FIELDS = ("extends", "account", "subject", "action", "resource",
                   "context")
_CASE_FIELDS = ("name", "description", "request", "now", "expect")
_EXPECT_FIELDS = ("decision", "reason", "rule")
_REASONS = {r.name.lower(): r for r in Reason}
_MATCHERS = ("compiled", "reference")


@dataclass(slots=True)
class Case:
    name: str
    line: int
    request: AuthorizeInput
    now_ms: int
    decision: str
    reason: str
    rule: str | None        # None: the rule is not checked


@dataclass(slots=True)
class Suite:
    path: str
    name: str
    policy_path: str
    policy: dict
    licenses: dict          # account -> binary record
    cases: list


@dataclass(slots=True)
class Outcome:
    case: Case
    passed: bool
    answers: dict = field(default_factory=dict)  # matcher -> (dec, why, rule)
    problem: str = ""


def find_suites(path: str) -> list:
    """The suite files at ``path``: itself, or those under a directory."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for directory, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(SUITE_SUFFIXES):
                found.append(os.path.join(directory, name))
    return found


def _text(where: _Where, value) -> str:
    """A value the request carries as a string (YAML scalars converted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise where.error("must be a string, number or boolean")


def _name(where: _Where, value) -> str:
    if not isinstance(value, str) or not value:
        raise where.error("must be a non-empty string")
    return value


def _strings(where: _Where, mapping, key: str) -> dict:
    """A map of attribute names to values, as strings."""
    if mapping.get(key) is None:
        return {}
    at = where.key(mapping, key)
    value = mapping[key]
    if not isinstance(value, _Map):
        raise at.error("must map names to values")
    return {str(k): _text(at.key(value, k), v) for k, v in value.items()}


def _moment_ms(where: _Where, value) -> int:
    """An RFC 3339 time, read exactly as license timestamps are."""
    if not isinstance(value, str):
        raise where.error("must be an RFC 3339 time such as "
                          "2026-12-04T15:00:00Z")
    try:
        return _rfc3339_ms(value)
    except ValueError as exc:
        raise where.error(str(exc)) from None


class _SuiteReader:
    """Validates one suite document; errors name the file, line, field."""

    def __init__(self, path: str):
        self.path = path

    def read(self, document) -> Suite:
        top = _Where(self.path, "", getattr(document, "line", 1))
        document = _mapping(top, document, _SUITE_FIELDS)
        for required in ("policy", "cases"):
            if required not in document:
                raise top.error("a suite needs %s" % required)

        pw = top.key(document, "policy")
        relative = _name(pw, document["policy"])
        policy_path = os.path.join(os.path.dirname(self.path), relative)
        if not os.path.isfile(policy_path):
            raise pw.error("no policy file %s" % policy_path)
        policy = compile_policy(policy_path)
        self.rules = [rule["id"] for rule in policy["rules"]]

        self.now_ms = None
        if "now" in document:
            self.now_ms = _moment_ms(top.key(document, "now"),
                                     document["now"])
        licenses = self.licenses(top, document, set(policy["plans"]))
        self.accounts = licenses
        self.request_sources = document.get("requests")
        requests = self.requests(top, document)

        cw = top.key(document, "cases")
        cases = document["cases"]
        if not isinstance(cases, _Seq) or not cases:
            raise cw.error("must be a non-empty list of cases")
        compiled = []
        seen = {}
        for index, case in enumerate(cases):
            compiled.append(self.case(cw.item(cases, index), case,
                                      requests))
            name = compiled[-1].name
            if name in seen:
                raise cw.item(cases, index).error(
                    "case name %r is already used at line %d"
                    % (name, seen[name]))
            seen[name] = compiled[-1].line

        name = document.get("name") or os.path.basename(self.path)
        return Suite(self.path, str(name), policy_path, policy,
                     {a: r for a, r in licenses.items() if r is not None},
                     compiled)

    def licenses(self, top: _Where, document, plans: set) -> dict:
        if document.get("licenses") is None:
            return {}
        lw = top.key(document, "licenses")
        licenses = document["licenses"]
        if not isinstance(licenses, _Map):
            raise lw.error("must map account ids to licenses")
        out = {}
        for account, spec in licenses.items():
            at = lw.key(licenses, account)
            if spec is None:
                out[account] = None
                continue
            if not isinstance(spec, _Map):
                raise at.error("must be a license (plan, status, ...) or "
                               "null for an account without one")
            if "account" in spec:
                raise at.key(spec, "account").error(
                    "the account is the key of the license")
            obj = {key: value.isoformat()
                   if isinstance(value, datetime.datetime) else value
                   for key, value in spec.items()}
            obj["account"] = account
            try:
                out[account] = encode_license(_license(obj, plans))
            except _LineError as exc:
                key = exc.field.split(".")[0]
                where = at.key(spec, key) if key in spec else at
                if key in spec and "." in exc.field:
                    where = _Where(self.path, "%s.%s" % (at.field,
                                                         exc.field),
                                   where.line)
                raise where.error(str(exc)) from None
            except ValueError as exc:
                raise at.error(str(exc)) from None
        return out

    def requests(self, top: _Where, document) -> dict:
        if document.get("requests") is None:
            return {}
        rw = top.key(document, "requests")
        requests = document["requests"]
        if not isinstance(requests, _Map):
            raise rw.error("must map request names to requests")
        out = {}
        for name, spec in requests.items():
            at = rw.key(requests, name)
            spec = _mapping(at, spec, _REQUEST_FIELDS)
            if "extends" in spec:
                raise at.key(spec, "extends").error(
                    "only a case's request can extend a named request")
            out[name] = (at, spec)
        # Validate every named request, used or not.
        return {name: self.request(at, spec)
                for name, (at, spec) in out.items()}

    def request(self, where: _Where, spec: _Map) -> AuthorizeInput:
        for required in ("account", "subject", "action"):
            if required not in spec:
                raise where.error("a request needs %s" % required)
        aw = where.key(spec, "account")
        account = _name(aw, spec["account"])
        if account not in self.accounts:
            raise aw.error("no license named %r (declare the account "
                           "under licenses, as null for an account "
                           "without a license)" % account)

        sw = where.key(spec, "subject")
        subject = spec["subject"]
        if isinstance(subject, str):
            subject = _Map(id=subject)
            subject.line, subject.key_lines = sw.line, {"id": sw.line}
        subject = _mapping(sw, subject, ("id", "roles", "attributes"))
        if "id" not in subject:
            raise sw.error("a subject needs an id")
        roles = ()
        if subject.get("roles") is not None:
            roles_at = sw.key(subject, "roles")
            if not isinstance(subject["roles"], _Seq):
                raise roles_at.error("must be a list of roles")
            roles = tuple(_name(roles_at.item(subject["roles"], i), r)
                          for i, r in enumerate(subject["roles"]))

        resource = _Map()
        resource.line, resource.key_lines = where.line, {}
        rw = where.key(spec, "resource")
        if spec.get("resource") is not None:
            resource = _mapping(rw, spec["resource"],
                                ("type", "id", "attributes"))

        q = AuthorizeInput(
            account_id=account,
            subject_id=_name(sw.key(subject, "id"), subject["id"]),
            action=_name(where.key(spec, "action"), spec["action"]),
            resource_type=_text(rw.key(resource, "type"),
                                resource.get("type", "")),
            resource_id=_text(rw.key(resource, "id"),
                              resource.get("id", "")),
            roles=roles,
            subject_attributes=_strings(sw, subject, "attributes"),
            resource_attributes=_strings(rw, resource, "attributes"),
            context=_strings(where, spec, "context"),
            dry_run=True)
        try:
            validate(q)
        except InvalidInput as exc:
            raise where.error(str(exc)) from None
        return q

    def case(self, where: _Where, case, requests: dict) -> Case:
        case = _mapping(where, case, _CASE_FIELDS)
        for required in ("name", "request", "expect"):
            if required not in case:
                raise where.error("a case needs %s" % required)
        name = _text(where.key(case, "name"), case["name"])

        qw = where.key(case, "request")
        spec = case["request"]
        if isinstance(spec, str):
            if spec not in requests:
                raise qw.error("no request named %r under requests" % spec)
            q = requests[spec]
        else:
            spec = _mapping(qw, spec, _REQUEST_FIELDS)
            if "extends" in spec:
                base_name = spec["extends"]
                if base_name not in requests:
                    raise qw.key(spec, "extends").error(
                        "no request named %r under requests" % base_name)
                spec = self.extended(qw, spec, base_name)
            q = self.request(qw, spec)

        now_ms = self.now_ms
        if "now" in case:
            now_ms = _moment_ms(where.key(case, "now"), case["now"])
        if now_ms is None:
            raise where.error("no now: give one for the suite or the case")

        ew = where.key(case, "expect")
        expect = _mapping(ew, case["expect"], _EXPECT_FIELDS)
        for required in ("decision", "reason"):
            if required not in expect:
                raise ew.error("an expectation needs decision and reason")
        decision = expect["decision"]
        if decision not in ("allow", "deny"):
            raise ew.key(expect, "decision").error("must be allow or deny")
        reason = expect["reason"]
        if reason not in _REASONS:
            raise ew.key(expect, "reason").error(
                "%r is not a reason (one of: %s)"
                % (reason, ", ".join(_REASONS)))
        if (reason == "allowed_by_rule") != (decision == "allow"):
            raise ew.key(expect, "reason").error(
                "reason %s cannot come with decision %s"
                % (reason, decision))
        rule = None
        if "rule" in expect:
            rule = expect["rule"] or ""
            if rule and rule not in self.rules:
                raise ew.key(expect, "rule").error(
                    "rule %r is not in the policy (rules: %s)"
                    % (rule, ", ".join(self.rules)))
        return Case(name, where.line, q, now_ms, decision, reason, rule)

    def extended(self, where: _Where, spec: _Map, base_name: str) -> _Map:
        """The named request's source with the case's fields over it."""
        base = self.request_sources[base_name]
        merged = _Map(base)
        merged.line = where.line
        merged.key_lines = dict(base.key_lines)
        for key, value in spec.items():
            if key != "extends":
                merged[key] = value
                merged.key_lines[key] = spec.key_lines[key]
        return merged


def read_suite(path: str) -> Suite:
    """Validate a suite and its policy; raise ``SourceError`` if invalid."""
    text = read_source(path)
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SourceError(path, mark.line + 1 if mark else 0, "yaml",
                          exc.problem or str(exc)) from None
    except yaml.YAMLError as exc:
        raise SourceError(path, 0, "yaml", str(exc)) from None
    if document is None:
        raise SourceError(path, 1, "file", "the suite is empty")

    return _SuiteReader(path).read(document)


def run_suite(suite: Suite) -> list:
    """Decide every case with both matchers; return their ``Outcome``."""
    clock_ms = [0]
    with tempfile.TemporaryDirectory(prefix="jitauth-test-") as data_dir:
        store = Store(data_dir, create=True)
        try:
            with store.env.begin(write=True) as txn:
                for account, record in sorted(suite.licenses.items()):
                    txn.put(store.licenses, account.encode(), record)
                install(store, txn, compiled_bytes(suite.policy), {
                    "origin": "test",
                    "policy_file": os.path.abspath(suite.policy_path),
                    "rules": len(suite.policy["rules"]),
                })
            authorizers = {name: Authorizer(data_dir, matcher=name,
                                            clock=lambda: clock_ms[0])
                           for name in _MATCHERS}
            try:
                outcomes = []
                for case in suite.cases:
                    clock_ms[0] = case.now_ms
                    outcomes.append(_decide(case, authorizers))
            finally:
                for authorizer in authorizers.values():
                    authorizer.close()
        finally:
            store.close()
    return outcomes


def _decide(case: Case, authorizers: dict) -> Outcome:
    outcome = Outcome(case, passed=True)
    for name, authorizer in authorizers.items():
        result = authorizer.authorize(case.request)
        outcome.answers[name] = ("allow" if result.allowed else "deny",
                                 result.reason.name.lower(), result.rule_id)

    compiled, reference = (outcome.answers[m] for m in _MATCHERS)
    expected = (case.decision, case.reason)
    if compiled != reference:
        outcome.passed = False
        outcome.problem = ("the matchers disagree: compiled %s, reference "
                           "%s" % (_answer(compiled), _answer(reference)))
    elif compiled[:2] != expected or (case.rule is not None
                                      and compiled[2] != case.rule):
        outcome.passed = False
        want = "%s %s" % expected
        if case.rule is not None:
            want += " (rule %s)" % (case.rule or "none")
        outcome.problem = "expected %s, got %s" % (want, _answer(compiled))
    return outcome


def _answer(answer: tuple) -> str:
    decision, reason, rule = answer
    return "%s %s (rule %s)" % (decision, reason, rule or "none")


def run(paths, out) -> int:
    """Run the suites at ``paths``; print per-case lines to ``out``.

    Returns 0 when every case passed, 1 when a case failed, 2 when a suite
    or its policy is invalid (that suite's cases are not run; the other
    suites still are).
    """
    files = []
    for path in paths:
        found = find_suites(path)
        if not found:
            print("error: %s: no test suites (files named *_test.yaml)"
                  % path, file=out)
            return EXIT_INVALID
        files.extend(found)

    status = EXIT_PASSED
    passed = failed = 0
    for path in files:
        try:
            suite = read_suite(path)
        except SourceError as exc:
            print("error: %s" % exc, file=out)
            status = EXIT_INVALID
            continue
        print("%s: %d cases, policy %s" % (path, len(suite.cases),
                                            suite.policy_path), file=out)
        for outcome in run_suite(suite):
            if outcome.passed:
                passed += 1
                print("  PASS  %s" % outcome.case.name, file=out)
            else:
                failed += 1
                print("  FAIL  %s (%s:%d)\n        %s"
                      % (outcome.case.name, path, outcome.case.line,
                         outcome.problem), file=out)
                if status == EXIT_PASSED:
                    status = EXIT_FAILED
    print("%d passed, %d failed%s" % (
        passed, failed, "" if status != EXIT_INVALID
        else ", invalid suites: not run"), file=out)
    return status
