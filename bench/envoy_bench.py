"""What jitauth adds behind Envoy: latency, and grants completed by the mesh.

Starts, all on 127.0.0.1: an echo upstream (its own process), ``jitauth
serve --envoy-config examples/envoy/mapping-headers.yaml`` on a bench
policy, and a real Envoy (``examples/envoy/envoy.yaml`` with this run's
ports, ``--concurrency 1``).  Then sends HTTP/1.1 requests at fixed rates
(open loop: each request has its scheduled start, and latency counts from
it, so a stalled server cannot hide its backlog), for a bounded time per
rate and scenario, in interleaved rounds (the figures are the median over
the rounds of each round's p50 and p99):

- ``upstream``: straight to the upstream, no Envoy (the floor);
- ``envoy``: through an Envoy without ext_authz or access log;
- ``allow``: through Envoy with jitauth; every request is allowed and
  issues a grant (one LMDB write), which the access log then completes;
- ``deny``: through Envoy with jitauth; every request is denied (an account
  without a license: the read-only path), Envoy answers 403 itself.

After the allow runs it asks jitauth about every grant it saw (Complete
with outcome cancelled): a grant already ended with outcome success was
completed by the mesh, and ``ended_at`` minus the moment the client had
the response is how soon after.  Prints one JSON object::

    python bench/envoy_bench.py --rates 100,300,600 --seconds 5 --rounds 3

The load generator, Envoy, jitauth and the upstream share the machine: on
a small machine they take CPU from each other.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from envoy_harness import Envoy, envoy_config, free_port  # noqa: E402
from live_server import ServeProcess, load_cli, stub  # noqa: E402

MAX_SECONDS = 30
MAX_RATE = 5000
MAX_ROUNDS = 10
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0
ACCOUNTS = 500

POLICY = """\
plans:
  pro:
    entitlements: [reports.view]
rules:
  - id: view
    effect: allow
    action: reports.view
    entitlement: reports.view
    grant: {ttl: 5m}
"""

MAPPING = os.path.join(ROOT, "examples", "envoy", "mapping-headers.yaml")

UPSTREAM = """\
import sys
sys.path.insert(0, %r)
from envoy_harness import Upstream
upstream = Upstream()
print(upstream.port, flush=True)
sys.stdin.read()
""" % os.path.join(ROOT, "tests")


def _request(path: str, headers: dict) -> bytes:
    lines = ["GET %s HTTP/1.1" % path, "host: bench"]
    lines += ["%s: %s" % item for item in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _response(reader) -> tuple:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _drive(port: int, rate: int, seconds: float, make) -> list:
    """Open-loop requests at ``rate`` per second; one result each:
    (latency s, status, body, wall ms when answered)."""
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    idle = []
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    results = []
    start = loop.time() + 0.2

    async def one(i: int):
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        async with slots:
            writer = None
            try:
                if idle:
                    reader, writer = idle.pop()
                else:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port)
                writer.write(make(i))
                status, body = await asyncio.wait_for(_response(reader),
                                                      REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError,
                    asyncio.TimeoutError):
                # Counted as status 0; the connection is not reused.
                if writer is not None:
                    writer.close()
                status, body = 0, b""
            else:
                idle.append((reader, writer))
            done = loop.time()
        results.append((done - scheduled, status, body,
                        time.time_ns() // 1_000_000))

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))),
                           timeout=seconds + 2 * REQUEST_TIMEOUT + 10)
    for _, writer in idle:
        writer.close()
    return results


def _percentiles(latencies: list) -> dict:
    ordered = sorted(latencies)
    if not ordered:
        return {}

    def at(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": round(at(0.50) * 1000, 3),
            "p99_ms": round(at(0.99) * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


def _run(port: int, rate: int, seconds: float, make,
         expect: int) -> tuple:
    results = asyncio.run(_drive(port, rate, seconds, make))
    statuses = {}
    for _, status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    # The first 10% warm connections up; they are not counted.
    kept = results[len(results) // 10:]
    summary = {"requests": len(results), "statuses": statuses,
               **_percentiles([r[0] for r in kept])}
    if statuses.get(expect, 0) != len(results):
        summary["unexpected"] = len(results) - statuses.get(expect, 0)
    return summary, results


def _mesh_completion(target: str, results: list, settle: float) -> tuple:
    """How many of the allowed requests' grants the access log completed,
    and how soon (ms) after the client had each response."""
    from jitauth.v1 import authorizer_pb2 as pb

    time.sleep(settle)
    answered = {}
    for _, status, body, wall_ms in results:
        if status == 200:
            grant_id = json.loads(body)["headers"].get("x-jitauth-grant-id")
            if grant_id:
                answered[grant_id] = wall_ms

    by_mesh, delays = 0, []
    channel, client = stub(target)
    with channel:
        for grant_id, wall_ms in answered.items():
            done = client.Complete(pb.CompleteRequest(
                grant_id=grant_id, outcome=pb.OUTCOME_CANCELLED), timeout=5)
            if done.already_ended and done.outcome == pb.OUTCOME_SUCCESS:
                by_mesh += 1
                delays.append(done.ended_at.ToMilliseconds() - wall_ms)
    return len(answered), by_mesh, delays


def _mesh_summary(grants: int, by_mesh: int, delays: list) -> dict:
    delays = sorted(delays)
    out = {"grants": grants, "completed_by_mesh": by_mesh,
           "share": round(by_mesh / grants, 4) if grants else 0}
    if delays:
        out.update({
            "delay_p50_ms": delays[len(delays) // 2],
            "delay_p99_ms": delays[min(len(delays) - 1,
                                       int(len(delays) * 0.99))],
            "delay_max_ms": delays[-1],
            "delay_min_ms": delays[0]})
    return out


def _median_of_rounds(rounds: list) -> dict:
    """One scenario at one rate over several rounds: the median of each
    round's p50 and p99 (a round hit by a stall of a neighbour on the
    machine moves the median little)."""
    statuses = {}
    for r in rounds:
        for status, count in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    out = {"rounds": len(rounds),
           "requests": sum(r["requests"] for r in rounds),
           "statuses": statuses}
    for q in ("p50_ms", "p99_ms"):
        values = sorted(r[q] for r in rounds)
        out[q] = values[len(values) // 2]
        out[q.replace("_ms", "_each_ms")] = [r[q] for r in rounds]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,300,600",
                        help="requests per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="per rate and scenario (at most %d)"
                        % MAX_SECONDS)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over every rate and scenario, "
                        "interleaved (at most %d)" % MAX_ROUNDS)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to let the access log catch up")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    if not 0 < args.seconds <= MAX_SECONDS or not all(
            0 < r <= MAX_RATE for r in rates) or not \
            0 < args.rounds <= MAX_ROUNDS:
        parser.error("--seconds up to %d, rates up to %d, rounds up to %d"
                     % (MAX_SECONDS, MAX_RATE, MAX_ROUNDS))

    work = tempfile.mkdtemp(prefix="jitauth-envoy-bench-")
    policy_path = os.path.join(work, "policy.yaml")
    licenses_path = os.path.join(work, "licenses.jsonl")
    with open(policy_path, "w") as f:
        f.write(POLICY)
    with open(licenses_path, "w") as f:
        for n in range(ACCOUNTS):
            f.write('{"account": "acct-%05d", "plan": "pro"}\n' % n)
    loaded = load_cli(os.path.join(work, "data"), policy_path,
                      licenses_path)
    if loaded.returncode != 0:
        raise SystemExit("load failed: %s" % loaded.stderr)

    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    upstream_port = int(upstream.stdout.readline())
    server = ServeProcess("--data", os.path.join(work, "data"), "--listen",
                          "127.0.0.1:0", "--envoy-config", MAPPING)
    jitauth_port = int(server.address.rsplit(":", 1)[1])
    from live_server import wait_serving

    wait_serving(server.address)
    proxies = {}
    try:
        proxies["envoy"] = Envoy(envoy_config(
            free_port(), free_port(), jitauth_port, upstream_port,
            ext_authz=False, access_log=False), work)
        proxies["jitauth"] = Envoy(envoy_config(
            free_port(), free_port(), jitauth_port, upstream_port), work)

        def allow(i):
            return _request("/reports/r-%d" % i, {
                "x-jitauth-account": "acct-%05d" % (i % ACCOUNTS),
                "x-jitauth-subject": "u%d" % i})

        def deny(i):
            return _request("/reports/r-%d" % i, {
                "x-jitauth-account": "no-such-account",
                "x-jitauth-subject": "u%d" % i})

        scenarios = [
            ("upstream", upstream_port, allow, 200),
            ("envoy", proxies["envoy"].port, allow, 200),
            ("allow", proxies["jitauth"].port, allow, 200),
            ("deny", proxies["jitauth"].port, deny, 403),
        ]
        report = {"rates": rates, "seconds": args.seconds,
                  "rounds": args.rounds, "envoy_concurrency": 1,
                  "jitauth_workers": 1, "cpus": os.cpu_count(),
                  "latency": {}, "mesh": {}}
        runs = {}
        mesh = {rate: [0, 0, []] for rate in rates}
        for round_ in range(args.rounds):
            for rate in rates:
                for name, port, make, expect in scenarios:
                    summary, results = _run(port, rate, args.seconds, make,
                                            expect)
                    runs.setdefault((rate, name), []).append(summary)
                    if name == "allow":
                        grants, by_mesh, delays = _mesh_completion(
                            server.address, results, args.settle)
                        mesh[rate][0] += grants
                        mesh[rate][1] += by_mesh
                        mesh[rate][2] += delays
            print("round %d done" % (round_ + 1), file=sys.stderr,
                  flush=True)

        for rate in rates:
            row = {name: _median_of_rounds(runs[rate, name])
                   for name, _, _, _ in scenarios}
            for name in ("allow", "deny"):
                for q in ("p50_ms", "p99_ms"):
                    row[name]["added_" + q] = round(
                        row[name][q] - row["envoy"][q], 3)
            report["latency"][str(rate)] = row
            report["mesh"][str(rate)] = _mesh_summary(*mesh[rate])
        print(json.dumps(report, indent=2))
    finally:
        for proxy in proxies.values():
            proxy.stop()
        server.stop()
        upstream.stdin.close()
        upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
