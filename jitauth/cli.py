"""The ``jitauth`` command: load data, serve it, and call a running server.

Exit codes:

- ``load``: 0 loaded (prints the new revision); 2 the files are invalid
  or unreadable (nothing was written); 1 any other failure.
- ``serve``: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when workers
  kept crashing; 2 bad arguments or the address cannot be bound.
- ``authorize``: 0 allowed; 1 denied; 2 bad arguments or an RPC error.
- ``complete``: 0 the server answered (whatever the grant's final state);
  2 bad arguments or an RPC error (``NOT_FOUND`` for an unknown grant).
"""

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone

log = logging.getLogger(__name__)

DEMO_DATA_DIR = "./jitauth-demo"
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
    load.set_defaults(run=_load)

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
    serve.set_defaults(run=_serve)

    auth = commands.add_parser("authorize",
                               help="ask a running server for a decision")
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
    auth.set_defaults(run=_authorize)

    complete = commands.add_parser(
        "complete", help="report that a granted action ended")
    _add_client_options(complete)
    complete.add_argument("grant_id")
    complete.add_argument("--outcome", default="success",
                          choices=["success", "failure", "cancelled"])
    complete.set_defaults(run=_complete)
    return parser


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

    try:
        revision = load(args.data, args.policy, args.licenses)
    except (SourceError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.error("load failed", exc_info=exc)
        return EXIT_FAILURE

    print(revision)
    return EXIT_OK


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

    def listening(address: str) -> None:
        print("jitauth serving %s on %s" % (os.path.abspath(data_dir),
                                            address), flush=True)

    try:
        return serve(data_dir, listen, args.workers, matcher=args.matcher,
                     grace=args.grace, on_listening=listening)
    except (OSError, ValueError) as exc:
        print("error: cannot listen on %s: %s" % (listen, exc),
              file=sys.stderr)
        return EXIT_USAGE


def _pairs(option: str, items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit("error: %s expects KEY=VALUE, got %r"
                             % (option, item))
        out[key] = value
    return out


def _call(args, method: str, request, response_cls):
    import grpc

    with grpc.insecure_channel(args.target) as channel:
        call = channel.unary_unary(
            "/jitauth.v1.Authorizer/" + method,
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
        )
    except SystemExit as exc:
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

    response = _call(args, "Complete", request, pb.CompleteResponse)
    if response is None:
        return EXIT_USAGE

    if args.json:
        print(_json(response))
    else:
        print(_describe_completion(response, pb))
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
    lines.append("  revision: %d" % r.revision)
    if r.decision_id:
        lines.append("  decision: %s" % r.decision_id)
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
