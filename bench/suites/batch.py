"""The batch suite: decisions per second when requests come in batches.

In process: two worker processes (one per core), each deciding batches
of the request mix through the compiled matcher alone and through the
whole ``Authorizer.authorize`` path (which also validates the request and
writes a grant for every allow): the ceiling before any wire cost.

Over gRPC: ``jitauth serve`` with 2 workers answers ``AuthorizeBatch``
calls (at most 1,000 requests each) from the Python client; the first
batch's answers are checked against the reference matcher first.
"""

import os

from bench import engines, servers, workload
from bench.worker import batch_throughput, run_in_children

BATCH_RPC = "/jitauth.v1.Authorizer/AuthorizeBatch"
MAX_RPC_BATCH = 1_000

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
              "skipped": {}}
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
    _grpc_batches(config, progress, wl, root, seconds, result)
    best = {}
    for run_ in result["runs"]:
        best[run_["mode"]] = max(best.get(run_["mode"], 0),
                                 run_["decisions_per_s"])
    result["summary"] = {"best_decisions_per_s": best,
                         "target_decisions_per_s": TARGET}
    return result


def _grpc_batches(config, progress, wl, root, seconds, result) -> None:
    from bench.load import python_client
    from bench.suites.grpc import _ready, jitauth_request
    from jitauth.v1 import authorizer_pb2 as pb

    if not hasattr(pb, "AuthorizeBatchRequest"):
        result["skipped"]["grpc-batch"] = ("the jitauth.v1 API has no "
                                           "AuthorizeBatch RPC")
        return
    requests = [jitauth_request(r, i) for i, r in enumerate(wl.requests)]
    server = servers.jitauth(wl.data_dir, PROCESSES, root)
    try:
        server.wait_ready(_ready(server.target, BATCH_RPC,
                                 pb.AuthorizeBatchRequest().
                                 SerializeToString()))
        reference = engines.build("jitauth-reference", wl)
        first = min(MAX_RPC_BATCH, len(requests))
        truth = [reference.decide(x) for x in
                 reference.inputs(wl.requests[:first])]
        reference.close()
        import grpc

        with grpc.insecure_channel(server.target) as channel:
            answer = pb.AuthorizeBatchResponse.FromString(
                channel.unary_unary(BATCH_RPC)(pb.AuthorizeBatchRequest(
                    requests=requests[:first]).SerializeToString(),
                    timeout=30))
        got = [r.HasField("response")
               and r.response.decision == pb.DECISION_ALLOW
               for r in answer.results]
        if got != truth:
            result["skipped"]["grpc-batch"] = (
                "AuthorizeBatch answers differ from the reference on %d of "
                "%d requests" % (sum(a != b for a, b in zip(
                                     got, truth, strict=False)), first))
            return
        for size in config.batch_sizes:
            size = min(size, MAX_RPC_BATCH)
            progress.step("batch: AuthorizeBatch of %d over gRPC" % size)
            bodies = [pb.AuthorizeBatchRequest(
                requests=requests[i:i + size]).SerializeToString()
                for i in range(0, len(requests) - size + 1, size)]
            load = python_client(server.target, BATCH_RPC, bodies,
                                 processes=2, in_flight=2, seconds=seconds)
            result["runs"].append({
                "mode": "grpc", "batch_size": size,
                "decisions_per_s": load["calls_per_s"] * size,
                "calls": load["calls"], "failed": load["failed"],
                "latency_us": load["latency_us"],
                "cpu_per_decision_us": float("nan")})
    except servers.StartFailed as exc:
        result["skipped"]["grpc-batch"] = str(exc)
    finally:
        server.stop()


def markdown(result) -> str:
    lines = ["\n%d accounts, %d rules; %d processes.\n"
             % (result["accounts"], result["rules"], result["processes"]),
             "| path | batch size | decisions/s (all processes) | "
             "CPU per decision |", "|---|---|---|---|"]
    for r in result["runs"]:
        cpu = r["cpu_per_decision_us"]
        lines.append("| %s | %d | %.0f | %s |" % (
            r["mode"], r["batch_size"], r["decisions_per_s"],
            "%.2f µs" % cpu if cpu == cpu else "-"))
    lines.append("\nTarget: %d decisions/s on 2 cores. The grpc rows "
                 "are AuthorizeBatch calls from the Python client (2 "
                 "processes on the same cores); CPU is not split per "
                 "decision there." % TARGET)
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
