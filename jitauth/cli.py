"""The ``jitauth`` command: load data, serve it, and call a running server.

Exit codes:

- ``load``: 0 loaded (prints the new revision); 2 the files are invalid
  or unreadable (nothing was written); 1 any other failure.
- ``serve``: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when workers
  kept crashing; 2 bad arguments or the address cannot be bound.
- ``authorize``: 0 allowed; 1 denied; 2 bad arguments or an RPC error.
- ``complete``: 0 the server answered (whatever the grant's final state);
  2 bad arguments or an RPC error (``NOT_FOUND`` for an unknown grant).
- ``explain``: like ``authorize`` (0 would allow, 1 would deny), as a dry
  run: nothing is issued or reserved.
- ``renew``, ``grants``, ``revoke``, ``account``: 0 the server answered;
  2 bad arguments or an RPC error (``FAILED_PRECONDITION`` when renewing a
  grant that has ended).
- ``apply``, ``revisions``, ``rollback``, ``licenses apply``, ``test``: see
  ``jitauth.cli_data``.
"""

import argparse
import json
import logging
import math
import os
import sys
from datetime import datetime, timezone

from jitauth import cli_data

log = logging.getLogger(__name__)

DEMO_DATA_DIR = "./jitauth-demo"
AUDIT_EVENTS = ("authorize", "complete", "renew", "revoke", "expire",
                "audit_dropped")
DEMO_LISTEN = "127.0.0.1:50051"

EXIT_OK = 0
EXIT_DENY = 1
EXIT_FAILURE = 1
EXIT_USAGE = 2


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr; the only place jitauth configures logging handlers."""
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(logging, args.log_level))
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``jitauth revisions | head``): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jitauth",
        description="Just-in-time authorization for licensed software.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    load = commands.add_parser(
        "load", help="validate policy and licenses, store a new revision")
    load.add_argument("--data", required=True, help="LMDB data directory")
    load.add_argument("--policy", required=True, help="policy YAML file")
    load.add_argument("--licenses", nargs="+", required=True,
                      metavar="FILE", help="license JSON Lines file(s)")
    load.add_argument("--progress", action="store_true",
                      help="draw a progress bar on stderr (the default "
                      "when stderr is a terminal)")
    cli_data.add_keep_option(load)
    load.set_defaults(run=_load)
    cli_data.add_commands(commands)

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--data", help="LMDB data directory (with --demo: "
                       "default %s)" % DEMO_DATA_DIR)
    serve.add_argument("--listen", help="HOST:PORT (default %s)"
                       % DEMO_LISTEN)
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port")
    serve.add_argument("--matcher", choices=["compiled", "reference"],
                       default="compiled")
    serve.add_argument("--grace", type=float, default=5.0,
                       help="seconds to drain calls in flight on shutdown")
    serve.add_argument("--demo", action="store_true",
                       help="create the demo data if absent and serve it")
    serve.add_argument("--envoy-config", metavar="FILE",
                       help="also serve Envoy's ext_authz and access log "
                       "services, mapping HTTP requests as FILE says")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve Prometheus metrics on http://HOST:PORT/"
                       "metrics")
    serve.add_argument("--audit", choices=["on", "off"], default="on",
                       help="write the audit trail (default on)")
    serve.add_argument("--audit-buffer", type=int, default=10_000,
                       metavar="N", help="records buffered per worker")
    serve.add_argument("--audit-when-full", choices=["block", "drop"],
                       default="block", help="when the buffer is full: "
                       "wait for room, or drop and count (default block)")
    serve.add_argument("--audit-retention", metavar="DURATION",
                       help="delete audit records older than this (30d, "
                       "12h; default: keep all)")
    serve.set_defaults(run=_serve)

    audit = commands.add_parser(
        "audit", help="read the audit trail: filter, follow, export")
    audit.add_argument("--data", required=True, help="LMDB data directory")
    audit.add_argument("--since", metavar="TIME",
                       help="ISO-8601 time, or a duration ago (15m, 2h)")
    audit.add_argument("--until", metavar="TIME")
    audit.add_argument("--account")
    audit.add_argument("--subject")
    audit.add_argument("--action")
    audit.add_argument("--decision", choices=["allow", "deny"])
    audit.add_argument("--event", choices=list(AUDIT_EVENTS))
    audit.add_argument("--limit", type=cli_data.whole_number(1, 2**63 - 1),
                       metavar="N",
                       help="stop after N records")
    audit.add_argument("--follow", action="store_true",
                       help="keep printing new records as they arrive")
    audit.add_argument("--follow-for", type=_seconds, metavar="SECONDS",
                       help="with --follow: stop after this long")
    audit.add_argument("--json", action="store_true",
                       help="JSON Lines, one record per line")
    audit.set_defaults(run=_audit)

    shadow = commands.add_parser(
        "shadow", help="evaluate a candidate policy beside the active one")
    shadow.add_argument("step", nargs="?", default="report",
                        choices=["report", "apply", "promote", "drop"],
                        help="report (default) the disagreements; apply a "
                        "candidate; promote it to the active revision; "
                        "drop it")
    shadow.add_argument("--data", required=True, help="LMDB data directory")
    shadow.add_argument("--policy", help="with apply: the candidate policy")
    shadow.add_argument("--json", action="store_true")
    shadow.set_defaults(run=_shadow)
    if "apply" in commands.choices:
        _add_shadow_flag(commands.choices["apply"])

    auth = commands.add_parser("authorize",
                               help="ask a running server for a decision")
    _add_request_options(auth)
    auth.add_argument("--dry-run", action="store_true",
                      help="decide only: issue no grant, reserve nothing")
    auth.add_argument("--explain", action="store_true",
                      help="print the evaluation steps")
    auth.set_defaults(run=_authorize)

    explain = commands.add_parser(
        "explain", help="show why a request would be allowed or denied")
    _add_request_options(explain)
    explain.set_defaults(run=_authorize, dry_run=True, explain=True)

    complete = commands.add_parser(
        "complete", help="report that a granted action ended")
    _add_client_options(complete)
    complete.add_argument("grant_id")
    complete.add_argument("--outcome", default="success",
                          choices=["success", "failure", "cancelled"])
    complete.add_argument("--units", type=int,
                          help="quota units consumed (default: all "
                          "reserved)")
    complete.set_defaults(run=_complete)

    renew = commands.add_parser("renew", help="extend a live grant")
    _add_client_options(renew)
    renew.add_argument("grant_id")
    renew.add_argument("--account", required=True)
    renew.add_argument("--extend-by", required=True, metavar="DURATION",
                       help="new expiry = now + DURATION (90s, 5m, 1h)")
    renew.set_defaults(run=_renew)

    listing = commands.add_parser("grants",
                                  help="list the live grants of an account")
    _add_client_options(listing)
    listing.add_argument("account")
    listing.set_defaults(run=_grants)

    revoke = commands.add_parser(
        "revoke", help="revoke a grant, or every grant of an account")
    _add_client_options(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("grant_id", nargs="?")
    which.add_argument("--account", help="revoke all its live grants")
    revoke.set_defaults(run=_revoke)

    account = commands.add_parser(
        "account", help="an account's license, seats and quota usage")
    _add_client_options(account)
    account.add_argument("account")
    account.set_defaults(run=_account)
    return parser


def _add_request_options(auth: argparse.ArgumentParser) -> None:
    _add_client_options(auth)
    auth.add_argument("--account", required=True)
    auth.add_argument("--subject", required=True)
    auth.add_argument("--role", action="append", default=[])
    auth.add_argument("--action", required=True)
    auth.add_argument("--resource-type", default="")
    auth.add_argument("--resource-id", default="")
    auth.add_argument("--context", action="append", default=[],
                      metavar="KEY=VALUE")
    auth.add_argument("--subject-attr", action="append", default=[],
                      metavar="KEY=VALUE")
    auth.add_argument("--resource-attr", action="append", default=[],
                      metavar="KEY=VALUE")
    auth.add_argument("--request-id", default="")
    auth.add_argument("--units", type=int, default=0,
                      help="quota units to reserve (default: the rule's)")


def _seconds(text: str) -> float:
    """A finite, positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a positive number of "
                                         "seconds, not %r" % text)
    return value


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEMO_LISTEN,
                        help="server HOST:PORT (default %s)" % DEMO_LISTEN)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the answer")
    parser.add_argument("--json", action="store_true",
                        help="print the response as JSON")


def _load(args) -> int:
    from jitauth.loader import load
    from jitauth.policy import SourceError

    return cli_data.print_revision(
        "load", lambda: load(args.data, args.policy, args.licenses,
                             keep=args.keep,
                             progress=args.progress or sys.stderr.isatty()),
        (SourceError, OSError))


def _serve(args) -> int:
    from jitauth.server import serve

    data_dir, listen = args.data, args.listen
    if args.demo:
        from jitauth.demo import ensure_demo

        data_dir = data_dir or DEMO_DATA_DIR
        listen = listen or DEMO_LISTEN
        ensure_demo(data_dir)
    if not data_dir or not listen:
        print("error: serve needs --data and --listen (or --demo)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    envoy = None
    if args.envoy_config:
        from jitauth.envoy import MappingError, load_mapping

        try:
            envoy = load_mapping(args.envoy_config)
            import jitauth.envoy.check  # noqa: F401  (needs xds-protos)
        except (MappingError, OSError, ImportError) as exc:
            print("error: --envoy-config: %s" % exc, file=sys.stderr)
            return EXIT_USAGE

    exporter = None
    try:
        _configure_recording(args)
        if args.metrics_listen:
            from jitauth.metrics import Exporter

            exporter = Exporter(args.metrics_listen, data_dir)
    except (OSError, ValueError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return EXIT_USAGE

    def listening(address: str) -> None:
        print("jitauth serving %s on %s" % (os.path.abspath(data_dir),
                                            address), flush=True)
        if exporter is not None:
            print("jitauth metrics on %s" % exporter.address, flush=True)

    try:
        return serve(data_dir, listen, args.workers, matcher=args.matcher,
                     grace=args.grace, on_listening=listening, envoy=envoy,
                     exporter=exporter)
    except (OSError, ValueError) as exc:
        print("error: cannot listen on %s: %s" % (listen, exc),
              file=sys.stderr)
        return EXIT_USAGE
    finally:
        if exporter is not None:
            exporter.close()


def _configure_recording(args) -> None:
    """Hand the audit options down to the workers (through environ)."""
    from jitauth.audit import AuditConfig, config_to_env, parse_duration_ms

    config_to_env(AuditConfig(
        audit=args.audit == "on", buffer=args.audit_buffer,
        when_full=args.audit_when_full,
        retention_ms=parse_duration_ms(args.audit_retention)
        if args.audit_retention else 0))


def _audit(args) -> int:
    from jitauth.audit import run_query

    return run_query(args)


def _shadow(args) -> int:
    from jitauth.shadow import run_command

    return run_command(args)


def _add_shadow_flag(apply: argparse.ArgumentParser) -> None:
    """``apply --shadow``: the policy becomes the shadow candidate."""
    apply.add_argument("--shadow", action="store_true",
                       help="evaluate the policy beside the active revision "
                       "instead of installing it (see jitauth shadow)")
    plain = apply.get_default("run")

    def run(args) -> int:
        if not args.shadow:
            return plain(args)
        args.step, args.json = "apply", False
        return _shadow(args)

    apply.set_defaults(run=run)


def _pairs(option: str, items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit("error: %s expects KEY=VALUE, got %r"
                             % (option, item))
        out[key] = value
    return out


def _call(args, method: str, request, response_cls,
          service: str = "jitauth.v1.Authorizer"):
    import grpc

    with grpc.insecure_channel(args.target) as channel:
        call = channel.unary_unary(
            "/%s/%s" % (service, method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_cls.FromString)
        try:
            return call(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print("error: %s: %s" % (exc.code().name, exc.details()),
                  file=sys.stderr)
            return None


def _authorize(args) -> int:
    from jitauth.v1 import authorizer_pb2 as pb

    try:
        request = pb.AuthorizeRequest(
            request_id=args.request_id,
            account_id=args.account,
            subject=pb.Subject(
                id=args.subject, roles=args.role,
                attributes=_pairs("--subject-attr", args.subject_attr)),
            action=args.action,
            resource=pb.Resource(
                type=args.resource_type, id=args.resource_id,
                attributes=_pairs("--resource-attr", args.resource_attr)),
            context=_pairs("--context", args.context),
            units=args.units,
            dry_run=args.dry_run,
            explain=args.explain,
        )
    except (SystemExit, ValueError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE

    response = _call(args, "Authorize", request, pb.AuthorizeResponse)
    if response is None:
        return EXIT_USAGE

    allowed = response.decision == pb.DECISION_ALLOW
    if args.json:
        print(_json(response))
    else:
        print(_describe_decision(response, pb))
    return EXIT_OK if allowed else EXIT_DENY


def _complete(args) -> int:
    from jitauth.v1 import authorizer_pb2 as pb

    request = pb.CompleteRequest(
        grant_id=args.grant_id,
        outcome=pb.Outcome.Value("OUTCOME_" + args.outcome.upper()))
    if args.units is not None:
        if args.units < 0:
            print("error: --units must be >= 0", file=sys.stderr)
            return EXIT_USAGE
        request.units = args.units

    response = _call(args, "Complete", request, pb.CompleteResponse)
    if response is None:
        return EXIT_USAGE

    if args.json:
        print(_json(response))
    else:
        print(_describe_completion(response, pb))
    return EXIT_OK


def _renew(args) -> int:
    from jitauth.policy import SourceError, parse_duration_ms
    from jitauth.v1 import authorizer_pb2 as pb

    try:
        extend_by_ms = parse_duration_ms(args.extend_by)
    except SourceError as exc:
        print("error: --extend-by: %s" % exc.message, file=sys.stderr)
        return EXIT_USAGE
    request = pb.RenewRequest(grant_id=args.grant_id, account_id=args.account)
    request.extend_by.FromMilliseconds(extend_by_ms)

    response = _call(args, "Renew", request, pb.RenewResponse)
    if response is None:
        return EXIT_USAGE
    if args.json:
        print(_json(response))
    else:
        print("RENEWED\n  grant:    %s\n  expires:  %s\n  at most:  %s"
              % (response.grant_id, _timestamp(response.expires_at),
                 _timestamp(response.max_expires_at)))
    return EXIT_OK


def _admin(args, method: str, request, response_cls):
    return _call(args, method, request, response_cls,
                 service="jitauth.v1.Admin")


def _grants(args) -> int:
    from jitauth.v1 import admin_pb2 as apb

    response = _admin(args, "ListGrants",
                      apb.ListGrantsRequest(account_id=args.account),
                      apb.ListGrantsResponse)
    if response is None:
        return EXIT_USAGE
    if args.json:
        print(_json(response))
        return EXIT_OK

    print("%d live grant(s) of %s" % (len(response.grants), args.account))
    for g in response.grants:
        held = ", ".join(filter(None, [
            "limit %s" % g.limit if g.limit else "",
            "%d unit(s) of %s" % (g.units, g.quota) if g.quota else ""]))
        print("  %s  %s by %s on %s:%s  rule %s  expires %s%s"
              % (g.grant_id, g.action, g.subject_id, g.resource_type,
                 g.resource_id, g.rule_id, _timestamp(g.expires_at),
                 "  (%s)" % held if held else ""))
    return EXIT_OK


def _revoke(args) -> int:
    from jitauth.v1 import admin_pb2 as apb
    from jitauth.v1 import authorizer_pb2 as pb

    if args.account:
        response = _admin(
            args, "RevokeAccountGrants",
            apb.RevokeAccountGrantsRequest(account_id=args.account),
            apb.RevokeAccountGrantsResponse)
        if response is None:
            return EXIT_USAGE
        print(_json(response) if args.json else
              "revoked %d live grant(s) of %s" % (response.revoked,
                                                  args.account))
        return EXIT_OK

    response = _admin(args, "RevokeGrant",
                      apb.RevokeGrantRequest(grant_id=args.grant_id),
                      apb.RevokeGrantResponse)
    if response is None:
        return EXIT_USAGE
    state = _enum_name(pb.GrantState, response.state, "GRANT_STATE_")
    print(_json(response) if args.json else "%s%s\n  grant:    %s"
          % (state.upper(), " (already ended)" if response.already_ended
             else "", response.grant_id))
    return EXIT_OK


def _account(args) -> int:
    from jitauth.v1 import admin_pb2 as apb

    r = _admin(args, "GetAccount",
               apb.GetAccountRequest(account_id=args.account),
               apb.GetAccountResponse)
    if r is None:
        return EXIT_USAGE
    if args.json:
        print(_json(r))
        return EXIT_OK

    if not r.HasField("license"):
        print("%s: no license" % r.account_id)
        return EXIT_OK
    lic = r.license
    window = "%s .. %s" % (
        _timestamp(lic.valid_from) if lic.HasField("valid_from") else "-",
        _timestamp(lic.valid_until) if lic.HasField("valid_until") else "-")
    print("%s: plan %s, %s, valid %s" % (r.account_id, lic.plan, lic.status,
                                         window))
    if lic.entitlements:
        print("  extra entitlements: %s" % ", ".join(lic.entitlements))
    for name, value in sorted(lic.limits.items()):
        print("  override: %s = %d" % (name, value))
    print("  live grants: %d" % r.live_grants)
    for name, used in sorted(r.seats.items()):
        print("  seats %s: %d in use" % (name, used))
    for q in r.quotas:
        print("  quota %s (%s from %s): %d consumed + %d reserved of %d"
              % (q.quota, q.period, _timestamp(q.period_start), q.consumed,
                 q.reserved, q.limit))
    return EXIT_OK


def _json(message) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(
        message, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True), indent=2)


def _enum_name(enum, value: int, prefix: str) -> str:
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _timestamp(ts) -> str:
    moment = datetime.fromtimestamp(ts.ToMilliseconds() / 1000,
                                    tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe_decision(r, pb) -> str:
    decision = "ALLOW" if r.decision == pb.DECISION_ALLOW else "DENY"
    lines = ["%s (%s)" % (decision, _enum_name(pb.Reason, r.reason,
                                               "REASON_"))]
    if r.message:
        lines.append("  %s" % r.message)
    if r.HasField("grant"):
        lines.append("  grant:    %s" % r.grant.id)
        lines.append("  expires:  %s" % _timestamp(r.grant.expires_at))
    if r.rule_id:
        lines.append("  rule:     %s" % r.rule_id)
    if r.units:
        lines.append("  units:    %d" % r.units)
    if r.HasField("retry_after"):
        lines.append("  retry in: %.3f s" % (
            r.retry_after.ToMilliseconds() / 1000))
    if r.dry_run:
        lines.append("  dry run:  nothing was issued or reserved")
    if r.replayed:
        lines.append("  replayed: the answer to an earlier request_id")
    lines.append("  revision: %d" % r.revision)
    if r.decision_id:
        lines.append("  decision: %s" % r.decision_id)
    if r.explanation:
        lines.append("  why:")
        lines.extend("    %d. %s" % (n, step)
                     for n, step in enumerate(r.explanation, 1))
    return "\n".join(lines)


def _describe_completion(r, pb) -> str:
    state = _enum_name(pb.GrantState, r.state, "GRANT_STATE_")
    lines = ["%s%s" % (state.upper(),
                       " (already ended)" if r.already_ended else "")]
    lines.append("  grant:    %s" % r.grant_id)
    if r.outcome:
        lines.append("  outcome:  %s" % _enum_name(pb.Outcome, r.outcome,
                                                   "OUTCOME_"))
    if r.account_id:
        lines.append("  account:  %s" % r.account_id)
    if r.action:
        lines.append("  action:   %s" % r.action)
    for label, name in (("issued", "issued_at"), ("expires", "expires_at"),
                        ("ended", "ended_at")):
        if r.HasField(name):
            lines.append("  %-9s %s" % (label + ":",
                                        _timestamp(getattr(r, name))))
    return "\n".join(lines)
