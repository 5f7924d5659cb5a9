"""Authorize over gRPC on loopback: p50, p99 and calls per second.

Starts ``jitauth serve`` on the demo data (2 workers by default) on
127.0.0.1, then drives it from several client processes, each with its own
connection and a fixed number of calls in flight, for a bounded time::

    python bench/grpc_bench.py --seconds 10 --clients 4 --in-flight 8

Workloads: ``allow`` (demo accounts viewing reports: every call issues a
grant, one LMDB write transaction each), ``deny`` (an unknown account: the
read-only path), ``quickstart`` (acme's export; mostly denied by its
concurrency limit once its slots are taken).  Prints one JSON object.
The client processes share the machine with the server: on a small
machine they take CPU from it, so the figures are a lower bound.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

MAX_SECONDS = 120
MAX_CLIENTS = 32


def _request(pb, workload: str, n: int):
    if workload == "deny":
        account, action = "no-such-account", "reports.view"
    elif workload == "quickstart":
        account, action = "acme", "reports.export"
    else:
        account, action = "acct-%05d" % (1 + n % 5000), "reports.view"
    return pb.AuthorizeRequest(
        account_id=account,
        subject=pb.Subject(id="alice", roles=["analyst"]),
        action=action,
        resource=pb.Resource(type="report", id="q3-revenue"),
        context={"env": "prod"},
    )


def _client(target, workload, seconds, in_flight, start_at, index, out):
    import grpc

    from jitauth.v1 import authorizer_pb2 as pb

    async def run():
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target,
                                             options=options) as channel:
            call = channel.unary_unary(
                "/jitauth.v1.Authorizer/Authorize",
                request_serializer=pb.AuthorizeRequest.SerializeToString,
                response_deserializer=pb.AuthorizeResponse.FromString)
            requests = [_request(pb, workload, index * 7919 + i)
                        for i in range(512)]
            await call(requests[0], timeout=10)
            await asyncio.sleep(max(0.0, start_at - time.time()))
            deadline = time.perf_counter() + seconds
            latencies, errors, decisions = [], 0, {}

            async def loop(offset):
                nonlocal errors
                n = offset
                while time.perf_counter() < deadline:
                    began = time.perf_counter()
                    try:
                        response = await call(requests[n % 512], timeout=10)
                    except grpc.RpcError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - began)
                    key = pb.Reason.Name(response.reason)
                    decisions[key] = decisions.get(key, 0) + 1
                    n += in_flight

            await asyncio.gather(*[loop(i) for i in range(in_flight)])
            out.put((latencies, errors, decisions))

    asyncio.run(run())


def _percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workload", default="allow",
                        choices=["allow", "deny", "quickstart"])
    parser.add_argument("--matcher", default="compiled",
                        choices=["compiled", "reference"])
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    clients = min(args.clients, MAX_CLIENTS)

    with tempfile.TemporaryDirectory(prefix="jitauth-bench-") as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "jitauth", "--log-level", "WARNING",
             "serve", "--demo", "--data", os.path.join(tmp, "demo"),
             "--listen", "127.0.0.1:0", "--workers", str(args.workers),
             "--matcher", args.matcher],
            stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            match = re.search(r" on (\S+)$", line.strip())
            if match is None:
                print("server did not start: %r" % line, file=sys.stderr)
                return 1
            target = match.group(1)
            _wait_serving(target)

            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            start_at = time.time() + 2.0
            procs = [ctx.Process(target=_client, args=(
                target, args.workload, seconds, args.in_flight, start_at,
                i, out)) for i in range(clients)]
            for proc in procs:
                proc.start()
            cpu_before = _server_cpu(server.pid)
            results = [out.get(timeout=seconds + 60) for _ in procs]
            cpu_used = _server_cpu(server.pid) - cpu_before
            for proc in procs:
                proc.join(30)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)

    latencies = sorted(x for r in results for x in r[0])
    decisions = {}
    for _, _, counts in results:
        for key, value in counts.items():
            decisions[key] = decisions.get(key, 0) + value
    report = {
        "workload": args.workload,
        "matcher": args.matcher,
        "workers": args.workers,
        "client_processes": clients,
        "in_flight_per_client": args.in_flight,
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "calls": len(latencies),
        "errors": sum(r[1] for r in results),
        "calls_per_second": round(len(latencies) / seconds),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        # CPU of the server's processes from the clients' start to their
        # end (including their warm-up), per call served.
        "server_cpu_us_per_call": round(cpu_used / len(latencies) * 1e6, 1),
        "decisions": decisions,
    }
    print(json.dumps(report, indent=2))
    return 0


def _server_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its child processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            with open("/proc/%d/stat" % current) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%d/task/%d/children" % (current, current)) as f:
                pids.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _wait_serving(target: str, timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(),
                                timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError("server at %s never became SERVING" % target)


if __name__ == "__main__":
    sys.exit(main())
