"""The data commands of ``jitauth``: apply, revisions, rollback, licenses
apply and test.  ``jitauth.cli`` adds them to its parser.

Exit codes:

- ``apply``, ``rollback``, ``licenses apply``: 0 done (prints the new
  revision, or the counts of the delta); 2 invalid input, no data in the
  directory, or a revision that is not stored or that no matcher can be
  built from (nothing was written); 1 any other failure.
- ``revisions``: 0 listed; 2 no data in the directory.
- ``test``: 0 every case passed; 1 a case failed; 2 a suite or its policy
  is invalid.
"""

import logging
import sys
from datetime import datetime, timezone

from jitauth.revisions import DEFAULT_KEEP

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def whole_number(low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number: %r" % text) \
                from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("must be from %d to %d"
                                             % (low, high))
        return value

    return parse


_keep = whole_number(1, 1_000_000)


def add_keep_option(parser) -> None:
    parser.add_argument("--keep", type=_keep, default=DEFAULT_KEEP,
                        metavar="N", help="revisions to keep, the new one "
                        "included (default %d)" % DEFAULT_KEEP)


def add_commands(commands) -> None:
    """Add the data commands to the ``jitauth`` subparsers."""
    apply = commands.add_parser(
        "apply", help="install a new policy revision (licenses stay)")
    apply.add_argument("--data", required=True, help="LMDB data directory")
    apply.add_argument("--policy", required=True, help="policy YAML file")
    add_keep_option(apply)
    apply.set_defaults(run=_apply)

    revisions = commands.add_parser(
        "revisions", help="list the stored policy revisions")
    revisions.add_argument("--data", required=True,
                           help="LMDB data directory")
    revisions.set_defaults(run=_revisions)

    rollback = commands.add_parser(
        "rollback", help="make a copy of a stored revision the active one")
    rollback.add_argument("--data", required=True,
                          help="LMDB data directory")
    rollback.add_argument("--to", required=True,
                          type=whole_number(1, 2**63 - 1), metavar="REV",
                          help="the revision to restore")
    add_keep_option(rollback)
    rollback.set_defaults(run=_rollback)

    licenses = commands.add_parser("licenses", help="change licenses")
    actions = licenses.add_subparsers(dest="licenses_command",
                                      required=True)
    delta = actions.add_parser(
        "apply", help="upsert or remove licenses from a JSON Lines delta")
    delta.add_argument("--data", required=True, help="LMDB data directory")
    delta.add_argument("file", help="delta file: one license, or "
                       '{"account": ..., "remove": true}, per line')
    delta.set_defaults(run=_licenses_apply)

    test = commands.add_parser(
        "test", help="run policy test suites (*_test.yaml)")
    test.add_argument("paths", nargs="+", metavar="PATH",
                      help="a suite file, or a directory to search")
    test.set_defaults(run=_test)


def print_revision(what: str, change, refused: tuple) -> int:
    """Run ``change()``, a store change that returns the new revision, and
    print that revision: exit 0; 2 for the ``refused`` errors (bad input,
    nothing written); 1 for anything else."""
    try:
        revision = change()
    except refused as exc:
        print("error: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.error("%s failed", what, exc_info=exc)
        return EXIT_FAILURE

    print(revision)
    return EXIT_OK


def _apply(args) -> int:
    from jitauth.policy import SourceError
    from jitauth.revisions import RevisionError, apply

    return print_revision(
        "apply", lambda: apply(args.data, args.policy, keep=args.keep),
        (SourceError, RevisionError))


def _rollback(args) -> int:
    from jitauth.policy import SourceError
    from jitauth.revisions import RevisionError, rollback

    return print_revision(
        "rollback", lambda: rollback(args.data, args.to, keep=args.keep),
        (SourceError, RevisionError))


def _revisions(args) -> int:
    from jitauth.revisions import RevisionError, list_revisions

    try:
        revisions = list_revisions(args.data)
    except RevisionError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return EXIT_USAGE

    print("  revision  loaded (UTC)          rules  origin        policy")
    for r in revisions:
        moment = datetime.fromtimestamp(r.loaded_at_ms / 1000,
                                        tz=timezone.utc)
        origin = r.origin
        if r.rolled_back_from is not None:
            origin = "rollback %d" % r.rolled_back_from
        print("%s %8d  %s  %5d  %-12s  %s" % (
            "*" if r.active else " ", r.revision,
            moment.strftime("%Y-%m-%d %H:%M:%S"), r.rules, origin,
            r.policy_file))
    return EXIT_OK


def _licenses_apply(args) -> int:
    from jitauth.loader import apply_delta
    from jitauth.policy import SourceError
    from jitauth.revisions import RevisionError

    try:
        counts = apply_delta(args.data, args.file)
    except (SourceError, RevisionError) as exc:
        for line in str(exc).splitlines():
            print("error: %s" % line, file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.error("license delta failed", exc_info=exc)
        return EXIT_FAILURE

    print("%(added)d added, %(updated)d updated, %(removed)d removed, "
          "%(absent)d already absent" % counts)
    return EXIT_OK


def _test(args) -> int:
    from jitauth.policytest import run

    if args.log_level == "INFO":
        # Opening the temporary stores is not news for a test run.
        logging.getLogger().setLevel(logging.WARNING)
    return run(args.paths, sys.stdout)
