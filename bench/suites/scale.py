"""The scale suite: latency and memory per worker as accounts grow.

For each size a fresh workload (same 1,000 rules, more accounts) is
loaded, and a fresh child process opens the environment the way a server
worker does, decides the request mix (accounts drawn uniformly from all
of them) in timed rounds, and reports the median decision time and its
own RSS and PSS.  Then ``jitauth serve`` with 2 workers is started on the
same data, driven for a few seconds by the Python client, and each
worker's RSS and PSS are read.  LMDB pages are shared file mappings, so
PSS splits them among the processes that touched them; a worker's
private memory should not grow with the number of accounts: the tables
give RSS, PSS and anonymous memory (heap and stacks, no file pages).
"""

import os
import shutil

from bench import machine, servers, workload
from bench.load import python_client
from bench.suites.grpc import AUTHORIZE, WORKERS, jitauth_request
from bench.worker import run_in_children, scale_probe

RULES = 1_000


def _serve_memory(config, wl, root, progress) -> dict:
    bodies = [jitauth_request(r, i).SerializeToString()
              for i, r in enumerate(wl.requests)]
    server = servers.jitauth(wl.data_dir, WORKERS, root)
    try:
        from bench.suites.grpc import _ready

        server.wait_ready(_ready(server.target, AUTHORIZE, bodies[0]))
        load = python_client(server.target, AUTHORIZE, bodies, processes=1,
                             in_flight=8, seconds=config.step_seconds)
        workers = machine.spawned_workers(server.pid)
        memory = [machine.memory_kib(p) for p in workers]
        return {"calls": load["calls"], "latency_us": load["latency_us"],
                "workers": memory}
    finally:
        server.stop()


def run(config, progress, found) -> dict:
    result = {"rules": RULES + len(workload.DENY_RULES), "sizes": [],
              "skipped": {}}
    try:
        from jitauth._core import Matcher  # noqa: F401
    except ImportError:
        result["skipped"]["scale"] = "the compiled matcher is not built"
        return result
    seconds = 4.0 if config.quick else 12.0
    for accounts in config.scale_accounts:
        root = os.path.join(config.work_dir, "scale-%d" % accounts)
        progress.step("scale: loading %d accounts" % accounts)
        wl = workload.build(root, accounts, RULES, config.requests,
                            seed=config.seed, progress=progress.update)
        progress.step("scale: deciding at %d accounts" % accounts)
        (probe,) = run_in_children(scale_probe, [(
            wl.data_dir, wl.requests, config.rounds, seconds)])
        entry = {"accounts": accounts, "probe": probe,
                 "data_mib": os.path.getsize(os.path.join(
                     wl.data_dir, "data.mdb")) / 2**20}
        progress.step("scale: serving %d accounts" % accounts)
        try:
            entry["serve"] = _serve_memory(config, wl, root, progress)
        except servers.StartFailed as exc:
            entry["serve_error"] = str(exc)
        result["sizes"].append(entry)
        shutil.rmtree(root, ignore_errors=True)
    if len(result["sizes"]) >= 2:
        first, last = result["sizes"][0], result["sizes"][-1]
        p50 = [s["probe"]["timing"]["p50"]["median"]
               for s in (first, last)]
        result["summary"] = {
            "p50_growth": p50[1] / p50[0] - 1,
            "from_accounts": first["accounts"],
            "to_accounts": last["accounts"],
            "target": "p50 at the largest size within 20% of the smallest",
        }
    return result


def _mib(kib) -> str:
    return "%.0f" % (kib / 1024)


def markdown(result) -> str:
    lines = ["\n%d rules; accounts drawn uniformly.\n" % result["rules"],
             "| accounts | data.mdb MiB | p50 | spread | p99 | probe RSS / "
             "PSS / anon MiB | served calls | worker RSS / PSS / anon MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in result["sizes"]:
        t = s["probe"]["timing"]
        mem = s["probe"]["memory_kib"]
        serve = s.get("serve")
        workers = ("; ".join("%s / %s / %s" % (
            _mib(w["rss"]), _mib(w["pss"]), _mib(w.get("anon", 0)))
            for w in serve["workers"]) if serve
                   else s.get("serve_error", "-"))
        lines.append("| %d | %.0f | %.2f µs | %.0f%% | %.2f µs | %s / %s / "
                     "%s | %s | %s |" % (
                         s["accounts"], s["data_mib"],
                         t["p50"]["median"] / 1000,
                         100 * t["p50"]["rel_spread"],
                         t["p99"]["median"] / 1000, _mib(mem["rss"]),
                         _mib(mem["pss"]), _mib(mem.get("anon", 0)),
                         serve["calls"] if serve else "-", workers))
    summary = result.get("summary")
    if summary:
        lines.append("\np50 at %d accounts is %+.0f%% of p50 at %d "
                     "(target: within 20%%)." % (
                         summary["to_accounts"],
                         100 * summary["p50_growth"],
                         summary["from_accounts"]))
    for name, reason in result.get("skipped", {}).items():
        lines.append("- %s: %s" % (name, reason))
    return "\n".join(lines) + "\n"


def plot(result, out_dir: str, stem: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    if not sizes:
        return []
    accounts = [s["accounts"] for s in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(accounts, [s["probe"]["timing"]["p50"]["median"] / 1000
                         for s in sizes], marker="o", label="p50")
    left.plot(accounts, [s["probe"]["timing"]["p99"]["median"] / 1000
                         for s in sizes], marker="o", label="p99")
    left.set_xscale("log")
    left.set_xlabel("accounts")
    left.set_ylabel("µs per decision")
    left.set_title("Decision latency")
    left.legend(fontsize="small")
    right.plot(accounts, [s["probe"]["memory_kib"]["rss"] / 1024
                          for s in sizes], marker="o", label="probe RSS")
    right.plot(accounts, [s["probe"]["memory_kib"]["pss"] / 1024
                          for s in sizes], marker="o", label="probe PSS")
    right.plot(accounts, [s["probe"]["memory_kib"].get("anon", 0) / 1024
                          for s in sizes], marker="o",
               label="probe anonymous")
    served = [s for s in sizes if s.get("serve")]
    if served:
        right.plot([s["accounts"] for s in served],
                   [max(w["pss"] for w in s["serve"]["workers"]) / 1024
                    for s in served], marker="s", label="worker PSS (max)")
    right.set_xscale("log")
    right.set_xlabel("accounts")
    right.set_ylabel("MiB")
    right.set_title("Memory per worker")
    right.legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(out_dir, "%s-scale.png" % stem)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
