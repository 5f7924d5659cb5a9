"""``python -m bench``: run the bench suites and write their results."""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback

from bench import machine, report, suites
from bench.config import Config
from bench.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure jitauth side by side with Cerbos, Rego "
                    "(regorus), CEL, Cedar and Casbin.")
    parser.add_argument("--suite", default="all",
                        choices=list(suites.NAMES) + ["all"])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and short steps (minutes)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench",
                                                      "results"),
                        help="directory for JSON, Markdown and PNG files")
    parser.add_argument("--engines", nargs="+", metavar="NAME",
                        help="only these in-process engines "
                             "(jitauth-compiled jitauth-reference regorus "
                             "cel cedar casbin)")
    parser.add_argument("--peers-dir", help="where Cerbos is installed "
                        "(default ~/.cache/jitauth-bench/peers)")
    parser.add_argument("--no-install", action="store_true",
                        help="never install peers or tools; skip what is "
                             "missing")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated data (printed at the end)")
    parser.add_argument("--seed", type=int, default=1)
    # Sizes, for a tiny run (the smoke test) or a custom one.
    parser.add_argument("--sizes", nargs="+", metavar="ACCOUNTS:RULES",
                        help="matcher sizes, e.g. 10000:100")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float,
                        help="time budget per engine and size")
    parser.add_argument("--scale-accounts", nargs="+", type=int)
    parser.add_argument("--batch-sizes", nargs="+", type=int)
    parser.add_argument("--rates", nargs="+", type=int,
                        help="gRPC request-rate steps (calls/s)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sizes = None
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes]
    config = Config.make(
        args.quick, out_dir=args.out, engines=tuple(args.engines or ()),
        peers_dir=args.peers_dir, seed=args.seed,
        install_peers=not args.no_install, matcher_sizes=sizes,
        requests=args.requests, rounds=args.rounds,
        engine_seconds=args.seconds, scale_accounts=args.scale_accounts,
        batch_sizes=args.batch_sizes, grpc_rates=args.rates)
    config.work_dir = tempfile.mkdtemp(prefix="jitauth-bench-")
    progress = Progress(quiet=args.quiet)

    from bench import tools as tooling

    found = tooling.versions(config)
    run = {"machine": machine.describe(ROOT, found), "suites": {},
           "skipped": {}, "config": {
               k: v for k, v in vars(config).items()
               if k not in ("work_dir", "peers_dir")}}
    names = suites.NAMES if args.suite == "all" else (args.suite,)
    stem = time.strftime("bench-%Y%m%d-%H%M%S")
    try:
        for name in names:
            module = __import__("bench.suites.%s" % name,
                                fromlist=["run"])
            try:
                run["suites"][name] = module.run(config, progress, found)
            except Exception as exc:
                run["suites"][name] = {"status": "failed",
                                       "error": repr(exc),
                                       "traceback": traceback.format_exc()}
                progress.note("suite %s failed: %r" % (name, exc))
            for key, reason in run["suites"][name].get("skipped",
                                                       {}).items():
                run["skipped"]["%s/%s" % (name, key)] = reason
        progress.done()
        paths = report.write(run, config.out_dir, stem)
    finally:
        if args.keep:
            print("data kept in %s" % config.work_dir, file=sys.stderr)
        else:
            shutil.rmtree(config.work_dir, ignore_errors=True)

    print(paths["json"])
    print(paths["markdown"])
    for path in paths["plots"]:
        print(path)
    failed = [n for n, r in run["suites"].items()
              if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
