"""The batch suite: decisions per second when requests come in batches.

The API has no batch RPC yet, so the gRPC figure is pending.  What is
measured: two worker processes (one per core), each deciding batches of
the request mix in process, through the compiled matcher alone and
through the whole ``Authorizer.authorize`` path (which also validates
the request and writes a grant for every allow).  This is the ceiling a
batch RPC could reach before any wire cost.
"""

import os

from bench import workload
from bench.worker import batch_throughput, run_in_children

PROCESSES = 2
MAX_DECISIONS = 50_000_000
TARGET = 100_000


def run(config, progress, found) -> dict:
    accounts, rules = ((10_000, 100) if config.quick
                       else (100_000, 1_000))
    root = os.path.join(config.work_dir, "batch")
    progress.step("batch: generating %d accounts, %d rules"
                  % (accounts, rules))
    wl = workload.build(root, accounts, rules, 10_000, seed=config.seed,
                        progress=progress.update)
    seconds = 3.0 if config.quick else 10.0
    result = {"accounts": accounts, "rules": wl.n_rules,
              "processes": PROCESSES, "runs": [],
              "skipped": {"grpc-batch": "pending: the jitauth.v1 API has "
                          "no batch RPC yet"}}
    modes = ["matcher", "facade"]
    try:
        from jitauth._core import Matcher  # noqa: F401
    except ImportError:
        result["skipped"]["matcher"] = "the compiled matcher is not built"
        result["skipped"]["facade"] = "the compiled matcher is not built"
        return result
    for mode in modes:
        for size in config.batch_sizes:
            progress.step("batch: %s, batches of %d, %d processes"
                          % (mode, size, PROCESSES))
            jobs = [(wl.data_dir, wl.requests[k::PROCESSES], mode, size,
                     seconds, MAX_DECISIONS) for k in range(PROCESSES)]
            parts = run_in_children(batch_throughput, jobs)
            total = sum(p["decisions"] / p["elapsed"] for p in parts)
            result["runs"].append({
                "mode": mode, "batch_size": size,
                "decisions_per_s": total,
                "per_process": parts,
                "cpu_per_decision_us": 1e6 * sum(p["cpu"] for p in parts)
                / sum(p["decisions"] for p in parts)})
    best = {}
    for run_ in result["runs"]:
        best[run_["mode"]] = max(best.get(run_["mode"], 0),
                                 run_["decisions_per_s"])
    result["summary"] = {"best_decisions_per_s": best,
                         "target_decisions_per_s": TARGET}
    return result


def markdown(result) -> str:
    lines = ["\n%d accounts, %d rules; %d processes.\n"
             % (result["accounts"], result["rules"], result["processes"]),
             "| path | batch size | decisions/s (all processes) | "
             "CPU per decision |", "|---|---|---|---|"]
    for r in result["runs"]:
        lines.append("| %s | %d | %.0f | %.2f µs |" % (
            r["mode"], r["batch_size"], r["decisions_per_s"],
            r["cpu_per_decision_us"]))
    lines.append("\nTarget: %d decisions/s on 2 cores." % TARGET)
    for name, reason in result.get("skipped", {}).items():
        lines.append("- %s: %s" % (name, reason))
    return "\n".join(lines) + "\n"


def plot(result, out_dir: str, stem: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not result["runs"]:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in sorted({r["mode"] for r in result["runs"]}):
        points = [(r["batch_size"], r["decisions_per_s"])
                  for r in result["runs"] if r["mode"] == mode]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=mode)
    ax.axhline(TARGET, color="grey", linestyle=":", label="target")
    ax.set_xscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("decisions/s, 2 processes")
    ax.set_title("Batch decisions per second (in process)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(out_dir, "%s-batch.png" % stem)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
