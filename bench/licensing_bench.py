"""What a seat and a quota add to an allow, and what each durability costs.

In process: the median time of ``Authorizer.authorize`` for a plain allow,
an allow holding a seat, and an allow holding a seat and reserving quota
units, under each ``JITAUTH_DURABILITY`` choice (each in a fresh process,
since the choice is fixed when the environment opens).  Over gRPC: the
same plain and seat+quota allows against ``jitauth serve --workers 2`` with
client processes racing, reported as calls per second and p50/p99.

    python bench/licensing_bench.py [--calls 20000] [--seconds 5]

Every loop is bounded by a count and a time; the server binds 127.0.0.1.
Ratios measured in one run are the figures to quote (the machine is
shared): compare columns, not runs.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

POLICY = """\
quotas:
  units.daily: {period: day}
plans:
  pro:
    limits: {seats: 1000000000}
    quotas: {units.daily: 1000000000000}
rules:
  - {id: plain, effect: allow, action: plain, grant: {ttl: 1h}}
  - id: seat
    effect: allow
    action: seat
    grant: {ttl: 1h, limit: seats, scope: subject}
  - id: seat-quota
    effect: allow
    action: seat_quota
    grant: {ttl: 1h, limit: seats, scope: subject, quota: units.daily}
"""
ACTIONS = ("plain", "seat", "seat_quota")


def make_data(directory: str) -> str:
    from jitauth.loader import load

    os.makedirs(directory, exist_ok=True)
    policy = os.path.join(directory, "policy.yaml")
    licenses = os.path.join(directory, "licenses.jsonl")
    with open(policy, "w") as f:
        f.write(POLICY)
    with open(licenses, "w") as f:
        for n in range(1000):
            f.write('{"account": "acct-%d", "plan": "pro"}\n' % n)
    data = os.path.join(directory, "data")
    load(data, policy, [licenses])
    return data


def in_process(data: str, calls: int, seconds: float) -> dict:
    """Median µs per allow of each kind (run in a fresh process)."""
    from jitauth.authorizer import Authorizer
    from jitauth.model import AuthorizeInput

    a = Authorizer(data)
    figures = {}
    for action in ACTIONS:
        samples = []
        deadline = time.monotonic() + seconds
        for n in range(calls):
            q = AuthorizeInput(account_id="acct-%d" % (n % 1000),
                               subject_id="u%d" % (n % 50), action=action)
            start = time.perf_counter_ns()
            result = a.authorize(q)
            samples.append(time.perf_counter_ns() - start)
            assert result.allowed, result
            if time.monotonic() > deadline:
                break
        samples.sort()
        figures[action] = {
            "calls": len(samples),
            "p50_us": samples[len(samples) // 2] / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        }
    a.close()
    return figures


def _client(target: str, action: str, seconds: float, calls: int, out):
    import grpc

    from jitauth.v1 import authorizer_pb2 as pb

    channel = grpc.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1)])
    authorize = channel.unary_unary(
        "/jitauth.v1.Authorizer/Authorize",
        request_serializer=pb.AuthorizeRequest.SerializeToString,
        response_deserializer=pb.AuthorizeResponse.FromString)
    latencies = []
    pid = os.getpid()
    deadline = time.monotonic() + seconds
    for n in range(calls):
        request = pb.AuthorizeRequest(
            account_id="acct-%d" % (n % 1000), action=action,
            subject=pb.Subject(id="u%d-%d" % (pid, n % 50)))
        start = time.perf_counter_ns()
        response = authorize(request, timeout=10)
        latencies.append(time.perf_counter_ns() - start)
        assert response.decision == pb.DECISION_ALLOW, response
        if time.monotonic() > deadline:
            break
    channel.close()
    out.put(latencies)


def run_grpc(data: str, clients: int, seconds: float, calls: int) -> dict:
    serve = subprocess.Popen(
        [sys.executable, "-m", "jitauth", "serve", "--data", data,
         "--listen", "127.0.0.1:0", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        target = serve.stdout.readline().strip().rsplit(" ", 1)[-1]
        time.sleep(2.0)  # both workers open their data
        ctx = multiprocessing.get_context("spawn")
        figures = {}
        for action in ACTIONS:
            out = ctx.Queue()
            procs = [ctx.Process(target=_client,
                                 args=(target, action, seconds, calls, out))
                     for _ in range(clients)]
            started = time.monotonic()
            for p in procs:
                p.start()
            latencies = []
            for _ in procs:
                latencies += out.get(timeout=seconds + 60)
            elapsed = time.monotonic() - started
            for p in procs:
                p.join(timeout=30)
            latencies.sort()
            figures[action] = {
                "calls_per_s": len(latencies) / elapsed,
                "p50_ms": latencies[len(latencies) // 2] / 1e6,
                "p99_ms": latencies[int(len(latencies) * 0.99)] / 1e6,
            }
        return figures
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(in_process(args.child, args.calls, args.seconds)))
        return

    report = {"in_process_us": {}, "grpc": None}
    with tempfile.TemporaryDirectory() as tmp:
        for choice in ("sync", "interval", "nosync"):
            data = make_data(os.path.join(tmp, choice))
            env = dict(os.environ, JITAUTH_DURABILITY=choice)
            child = subprocess.run(
                [sys.executable, __file__, "--child", data, "--calls",
                 str(args.calls), "--seconds", str(args.seconds)],
                env=env, capture_output=True, text=True, check=True)
            report["in_process_us"][choice] = json.loads(child.stdout)
        data = make_data(os.path.join(tmp, "grpc"))
        report["grpc"] = run_grpc(data, args.clients, args.seconds,
                                  args.calls)

    print(json.dumps(report, indent=2))
    print("\nin process, median µs per allow (p99):")
    print("%-10s %14s %14s %14s" % (("durability",) + ACTIONS))
    for choice, row in report["in_process_us"].items():
        print("%-10s %s" % (choice, " ".join(
            "%8.1f (%4.0f)" % (row[a]["p50_us"], row[a]["p99_us"])
            for a in ACTIONS)))
    print("\ngRPC, 2 workers, %d racing clients:" % args.clients)
    for action, row in report["grpc"].items():
        print("  %-11s %7.0f calls/s  p50 %.2f ms  p99 %.2f ms"
              % (action, row["calls_per_s"], row["p50_ms"], row["p99_ms"]))


if __name__ == "__main__":
    main()
