"""Load generators: h2load with prebuilt gRPC frames, and a Python client.

h2load (nghttp2) sends one fixed request body over HTTP/2; a gRPC call is
a POST whose body is a length-prefixed frame (one flag byte, a 4-byte
big-endian length, the serialized message), so the frame is built once
and written to a file.  h2load sees HTTP status only, not grpc-status:
each server's answers are checked with the Python client first.
Latency percentiles come from h2load's per-request log.

The Python client runs several processes, each with its own connection
(grpc.aio) and a window of calls in flight, over the whole request mix.
At a fixed rate, calls are sent on a schedule and latency counts from the
scheduled time, so a stalled server is not hidden by a stalled client.
Both stop at a call count or a deadline, whichever comes first.
"""

import asyncio
import multiprocessing
import os
import re
import subprocess
import time

from bench import timing

MAX_CALLS = 5_000_000


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(binary: str, url: str, *, connections: int, streams: int,
           seconds: int, work_dir: str, body: bytes | None = None,
           rate: int | None = None, warmup: int = 1) -> dict:
    """One h2load run; ``rate`` is calls/s in all (None: saturate)."""
    log_path = os.path.join(work_dir, "h2load-%d.log" % time.time_ns())
    argv = [binary, "-c", str(connections), "-m", str(streams),
            "-D", str(seconds), "--warm-up-time", str(warmup),
            "--log-file", log_path]
    if rate:
        argv += ["--rps", str(max(1, rate // connections))]
    if body is not None:
        body_path = log_path + ".body"
        with open(body_path, "wb") as f:
            f.write(body)
        argv += ["-d", body_path, "-H", "content-type: application/grpc",
                 "-H", "te: trailers"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True,
                         timeout=seconds + warmup + 60)
    text = out.stdout
    result = {"tool": "h2load", "connections": connections,
              "streams": streams, "seconds": seconds, "rate": rate}
    match = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    if not match or out.returncode != 0:
        raise RuntimeError("h2load failed (%d): %s" % (
            out.returncode, (out.stderr or text)[-400:]))
    result["calls_per_s"] = float(match[2])
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done,"
                       r" (\d+) succeeded, (\d+) failed", text)
    if counts:
        result.update(calls=int(counts[3]), succeeded=int(counts[4]),
                      failed=int(counts[5]))
    latencies = []
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[1].startswith("2"):
                latencies.append(int(parts[2]))
    result["latency_us"] = timing.summarise(latencies)
    os.remove(log_path)
    return result


async def _calls(target, method, bodies, in_flight, seconds, rate,
                 max_calls, offset):
    import grpc

    latencies, errors = [], 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        await channel.channel_ready()
        start = time.perf_counter()
        deadline = start + seconds
        counter = iter(range(max_calls))
        n_bodies = len(bodies)

        async def worker():
            nonlocal errors
            for i in counter:
                if rate:
                    due = start + i / rate
                    now = time.perf_counter()
                    if due > now:
                        await asyncio.sleep(due - now)
                    t0 = due
                else:
                    t0 = time.perf_counter()
                if t0 > deadline:
                    return
                try:
                    await call(bodies[(i + offset) % n_bodies], timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def _client_process(args) -> dict:
    latencies, errors, elapsed = asyncio.run(_calls(*args))
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def python_client(target: str, method: str, bodies: list, *,
                  processes: int, in_flight: int, seconds: float,
                  rate: int | None = None,
                  max_calls: int = MAX_CALLS) -> dict:
    """Drive ``method`` from ``processes`` connections; gather latencies."""
    per_rate = rate / processes if rate else None
    per_calls = max_calls // processes
    jobs = [(target, method, bodies, in_flight, seconds, per_rate,
             per_calls, k * 7919) for k in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.map(_client_process, jobs, chunksize=1)
    latencies = [x * 1e6 for p in parts for x in p["latencies"]]
    elapsed = max(p["elapsed"] for p in parts)
    return {"tool": "python-grpc", "connections": processes,
            "streams": in_flight, "seconds": seconds, "rate": rate,
            "calls": len(latencies),
            "failed": sum(p["errors"] for p in parts),
            "calls_per_s": len(latencies) / elapsed if elapsed else 0.0,
            "latency_us": timing.summarise(latencies)}
