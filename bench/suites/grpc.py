"""The grpc suite: jitauth and Cerbos over gRPC, and a raw HTTP/2 floor.

Both servers get the same workload (jitauth from its LMDB environment,
Cerbos as resource policies with the license facts in each request; see
``bench.engines.cerbos_policy``) and are first checked to answer the
request mix as jitauth's reference matcher does.  Then the same load
generators drive each: h2load with a prebuilt gRPC frame (one allowed
request; on jitauth every allow issues a grant, an LMDB write) at fixed
rates and at saturation, and the multi-connection Python client over the
whole mix.  Two floors: nghttpd serving a two-byte file to h2load (what
HTTP/2 on this machine costs with no authorization at all), and
``bench.floor_server``, a grpcio server shaped like ``jitauth serve`` that
answers every call with an empty message (what Python gRPC serving costs
before any deciding).

Server CPU is read from ``/proc`` for the server's whole process tree
(jitauth: the supervisor and its 2 workers) before and after each step;
calls per core-second is calls divided by those CPU seconds.
"""

import os

import grpc

from bench import engines, machine, servers, timing, tools, workload
from bench.engines import cerbos_policy
from bench.load import grpc_frame, h2load, python_client
from jitauth.v1 import authorizer_pb2 as pb

AUTHORIZE = "/jitauth.v1.Authorizer/Authorize"
CHECK = "/cerbos.svc.v1.CerbosService/CheckResources"
WORKERS = 2
CHECKED_REQUESTS = 500


def jitauth_request(r, index: int) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        request_id="r%d" % index, account_id=r.account_id,
        subject=pb.Subject(id=r.subject_id, roles=list(r.roles),
                           attributes=r.subject_attributes),
        action=r.action,
        resource=pb.Resource(type=r.resource_type, id=r.resource_id,
                             attributes=r.resource_attributes),
        context=r.context)


def _jitauth_allowed(data: bytes, action: str) -> bool:
    return (pb.AuthorizeResponse.FromString(data).decision
            == pb.DECISION_ALLOW)


def _verify(target: str, method: str, bodies, actions, truth,
            allowed) -> list:
    """Indices where the server's answer differs from ``truth``."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        return [i for i, body in enumerate(bodies)
                if allowed(call(body, timeout=10), actions[i]) != truth[i]]


def _ready(target: str, method: str, body: bytes):
    def probe() -> bool:
        try:
            with grpc.insecure_channel(target) as channel:
                channel.unary_unary(method)(body, timeout=2)
            return True
        except grpc.RpcError:
            return False
    return probe


class Target:
    """A running server and what to send it."""

    def __init__(self, name, server, url, method=None, bodies=None,
                 frame=None):
        self.name = name
        self.server = server
        self.url = url
        self.method = method
        self.bodies = bodies
        self.frame = frame

    def pids(self) -> list:
        return machine.process_tree(self.server.pid)


def _step(target: Target, run_load) -> dict:
    pids = target.pids()
    before = sum(machine.cpu_seconds(p) for p in pids)
    result = run_load()
    pids = target.pids()
    cpu = sum(machine.cpu_seconds(p) for p in pids) - before
    memory = [machine.memory_kib(p) for p in pids]
    calls = result.get("calls") or 0
    result.update(
        target=target.name, server_cpu_s=cpu,
        cpu_per_call_us=cpu / calls * 1e6 if calls else None,
        calls_per_core_s=calls / cpu if cpu else None,
        server_processes=len(pids),
        rss_kib=sum(m["rss"] for m in memory),
        pss_kib=sum(m["pss"] for m in memory))
    return result


def run(config, progress, found) -> dict:
    accounts, rules = ((10_000, 100) if config.quick
                       else (100_000, 1_000))
    root = os.path.join(config.work_dir, "grpc")
    progress.step("grpc: generating %d accounts, %d rules"
                  % (accounts, rules))
    wl = workload.build(root, accounts, rules, 2_000, seed=config.seed,
                        progress=progress.update)
    reference = engines.build("jitauth-reference", wl)
    truth = [reference.decide(x) for x in
             reference.inputs(wl.requests[:CHECKED_REQUESTS])]
    reference.close()
    allow_index = truth.index(True)
    actions = [r.action for r in wl.requests]
    result = {"accounts": accounts, "rules": wl.n_rules, "workers": WORKERS,
              "steps": [], "checks": {}, "skipped": {},
              "h2load_request": {"index": allow_index,
                                 "decision": "allow"}}

    try:
        h2load_bin = tools.debian("h2load", "nghttp2-client", config)
    except tools.Missing as exc:
        h2load_bin = None
        result["skipped"]["h2load"] = str(exc)

    started = []
    targets = []
    try:
        progress.step("grpc: starting jitauth serve (%d workers)"
                      % WORKERS)
        bodies = [jitauth_request(r, i).SerializeToString()
                  for i, r in enumerate(wl.requests)]
        server = servers.jitauth(wl.data_dir, WORKERS, root)
        started.append(server)
        server.wait_ready(_ready(server.target, AUTHORIZE, bodies[0]))
        bad = _verify(server.target, AUTHORIZE, bodies[:len(truth)],
                      actions, truth, _jitauth_allowed)
        result["checks"]["jitauth"] = {"checked": len(truth),
                                       "disagree": len(bad)}
        if bad:
            result["skipped"]["jitauth"] = ("%d of %d answers differ from "
                                            "the reference" % (len(bad),
                                                               len(truth)))
        else:
            targets.append(Target(
                "jitauth", server, "http://%s%s" % (server.target,
                                                    AUTHORIZE),
                AUTHORIZE, bodies, grpc_frame(bodies[allow_index])))

        targets += _start_cerbos(config, progress, wl, root, truth,
                                 actions, allow_index, result, started)

        targets += _start_grpc_floor(root, bodies, allow_index, result,
                                     started)

        if h2load_bin:
            try:
                nghttpd_bin = tools.debian("nghttpd", "nghttp2-server",
                                           config)
                docroot = os.path.join(root, "docroot")
                os.makedirs(docroot, exist_ok=True)
                with open(os.path.join(docroot, "ok"), "w") as f:
                    f.write("ok")
                server = servers.nghttpd(nghttpd_bin, docroot, root)
                started.append(server)
                server.wait_ready()
                targets.append(Target("http2-floor", server, "http://%s/ok"
                                      % server.target))
            except (tools.Missing, servers.StartFailed) as exc:
                result["skipped"]["http2-floor"] = str(exc)

        _drive(config, progress, targets, h2load_bin, root, result)
    finally:
        for server in started:
            server.stop()
    result["summary"] = _summary(config, result)
    return result


def _start_cerbos(config, progress, wl, root, truth, actions, allow_index,
                  result, started) -> list:
    try:
        binary = tools.cerbos(config)
        import cerbos.svc.v1.svc_pb2  # noqa: F401 (the stubs are needed)
    except (tools.Missing, ImportError) as exc:
        result["skipped"]["cerbos"] = str(exc)
        return []
    progress.step("grpc: starting Cerbos")
    policy_dir = os.path.join(root, "cerbos-policies")
    cerbos_policy.write_policies(policy_dir, wl.rules)
    bodies = [cerbos_policy.check_request(wl, r, i).SerializeToString()
              for i, r in enumerate(wl.requests)]
    server = servers.cerbos(binary, policy_dir, root)
    started.append(server)
    try:
        server.wait_ready(_ready(server.target, CHECK, bodies[0]))
    except servers.StartFailed as exc:
        result["skipped"]["cerbos"] = str(exc)
        return []
    bad = _verify(server.target, CHECK, bodies[:len(truth)], actions,
                  truth, cerbos_policy.allowed)
    result["checks"]["cerbos"] = {"checked": len(truth),
                                  "disagree": len(bad)}
    if bad:
        result["skipped"]["cerbos"] = ("%d of %d answers differ from the "
                                       "reference" % (len(bad), len(truth)))
        return []
    return [Target("cerbos", server, "http://%s%s" % (server.target, CHECK),
                   CHECK, bodies, grpc_frame(bodies[allow_index]))]


def _start_grpc_floor(root, bodies, allow_index, result, started) -> list:
    """The no-op Python gRPC server, sent jitauth's own requests."""
    server = servers.grpc_floor(WORKERS, root)
    started.append(server)
    try:
        server.wait_ready(_ready(server.target, AUTHORIZE, bodies[0]))
    except servers.StartFailed as exc:
        result["skipped"]["grpc-floor"] = str(exc)
        return []
    return [Target("grpc-floor", server, "http://%s%s" % (server.target,
                                                          AUTHORIZE),
                   AUTHORIZE, bodies, grpc_frame(bodies[allow_index]))]


def _drive(config, progress, targets, h2load_bin, root, result) -> None:
    steps = result["steps"]
    seconds = config.step_seconds
    if h2load_bin:
        for index in range(config.grpc_rounds):
            for target in targets:
                progress.step("grpc: h2load saturation %s (round %d/%d)"
                              % (target.name, index + 1,
                                 config.grpc_rounds))
                steps.append(_step(target, lambda t=target: h2load(
                    h2load_bin, t.url, body=t.frame,
                    connections=config.connections,
                    streams=config.streams, seconds=seconds,
                    work_dir=root)))
        for rate in config.grpc_rates:
            for target in targets:
                progress.step("grpc: h2load %d calls/s %s"
                              % (rate, target.name))
                steps.append(_step(target, lambda t=target, r=rate: h2load(
                    h2load_bin, t.url, body=t.frame,
                    connections=config.connections, streams=1,
                    seconds=seconds, work_dir=root, rate=r)))
    for target in targets:
        if not target.method:
            continue
        progress.step("grpc: python client saturation %s" % target.name)
        steps.append(_step(target, lambda t=target: python_client(
            t.server.target, t.method, t.bodies, processes=2,
            in_flight=config.streams * 2, seconds=seconds)))
        rate = config.grpc_rates[0]
        progress.step("grpc: python client %d calls/s %s"
                      % (rate, target.name))
        steps.append(_step(target, lambda t=target, r=rate: python_client(
            t.server.target, t.method, t.bodies, processes=2,
            in_flight=config.streams * 2, seconds=seconds, rate=r)))


def _summary(config, result) -> dict:
    out = {}
    moderate = config.grpc_rates[len(config.grpc_rates) // 2]
    names = {s["target"] for s in result["steps"]}
    for name in sorted(names):
        sat = [s for s in result["steps"] if s["target"] == name
               and s["tool"] == "h2load" and not s["rate"]]
        fixed = [s for s in result["steps"] if s["target"] == name
                 and s["tool"] == "h2load" and s["rate"] == moderate]
        entry = {}
        if sat:
            entry["saturation_calls_per_s"] = timing.spread(
                [s["calls_per_s"] for s in sat])
            per_core = [s["calls_per_core_s"] for s in sat
                        if s["calls_per_core_s"]]
            if per_core:
                entry["calls_per_core_s"] = timing.spread(per_core)
            entry["saturation_p99_us"] = timing.spread(
                [s["latency_us"]["p99"] for s in sat])
        if fixed:
            entry["moderate_rate"] = moderate
            entry["moderate_p99_us"] = fixed[0]["latency_us"]["p99"]
            entry["moderate_p50_us"] = fixed[0]["latency_us"]["p50"]
        out[name] = entry
    mine, theirs = out.get("jitauth", {}), out.get("cerbos", {})
    if "calls_per_core_s" in mine and "calls_per_core_s" in theirs:
        out["per_core_ratio"] = (mine["calls_per_core_s"]["median"]
                                 / theirs["calls_per_core_s"]["median"])
    if "moderate_p99_us" in mine and "moderate_p99_us" in theirs:
        out["moderate_p99_ratio"] = (mine["moderate_p99_us"]
                                     / theirs["moderate_p99_us"])
    return out


def markdown(result) -> str:
    lines = ["\n%d accounts, %d rules; jitauth with %d workers. "
             "h2load sends request #%d (an allow) as a prebuilt frame.\n"
             % (result["accounts"], result["rules"], result["workers"],
                result["h2load_request"]["index"]),
             "| target | tool | rate | conns x streams | calls/s | p50 | "
             "p90 | p99 | max | server CPU/call | calls per core-s | "
             "RSS / PSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["steps"]:
        lat = s["latency_us"]
        lines.append(
            "| %s | %s | %s | %dx%d | %.0f | %.0f µs | %.0f µs | %.0f µs | "
            "%.0f µs | %s | %s | %.0f / %.0f |" % (
                s["target"], s["tool"], s["rate"] or "max",
                s["connections"], s["streams"], s["calls_per_s"],
                lat["p50"], lat["p90"], lat["p99"], lat["max"],
                "%.0f µs" % s["cpu_per_call_us"] if s["cpu_per_call_us"]
                else "-",
                "%.0f" % s["calls_per_core_s"] if s["calls_per_core_s"]
                else "-", s["rss_kib"] / 1024, s["pss_kib"] / 1024))
    summary = result.get("summary", {})
    if "per_core_ratio" in summary:
        lines.append("\njitauth / Cerbos calls per core-second: %.2f "
                     "(target >= 1)" % summary["per_core_ratio"])
    if "moderate_p99_ratio" in summary:
        lines.append("jitauth / Cerbos p99 at a moderate rate: %.2f "
                     "(target <= 1)" % summary["moderate_p99_ratio"])
    for name, check in result.get("checks", {}).items():
        lines.append("- %s answered %d of %d check requests as the "
                     "reference did" % (name, check["checked"]
                                        - check["disagree"],
                                        check["checked"]))
    for name, reason in result.get("skipped", {}).items():
        lines.append("- skipped %s: %s" % (name, reason))
    return "\n".join(lines) + "\n"


def plot(result, out_dir: str, stem: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [s for s in result["steps"]
             if s["tool"] == "h2load" and s["rate"]]
    if not fixed:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in sorted({s["target"] for s in fixed}):
        points = sorted((s["rate"], s["latency_us"]) for s in fixed
                        if s["target"] == name)
        rates = [p[0] for p in points]
        for key, style in (("p50", "-"), ("p99", "--")):
            ax.plot(rates, [p[1][key] / 1000 for p in points], style,
                    marker="o", label="%s %s" % (name, key))
    ax.set_xlabel("offered calls/s (h2load)")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.set_title("Latency percentiles against request rate")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(out_dir, "%s-grpc.png" % stem)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
