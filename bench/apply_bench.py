"""A policy switch under load: how soon every worker decides with it.

Starts ``jitauth serve --workers 2`` on 127.0.0.1 over the demo data, keeps
it busy from several connections (one call in flight each, a bounded
time), and every ``--interval`` seconds runs ``jitauth apply`` with the
other of two policies.  The two differ only in the id of the rule that
allows the workload (``view-reports`` / ``view-reports-b``), so every
answer shows which revision decided it::

    python bench/apply_bench.py --rounds 5 --connections 8

For each round it reports the time from ``jitauth apply`` returning (its
process exiting) to the first answer carrying the new revision on every
connection, and the calls that failed meanwhile.  Which worker serves
which connection is read from /proc, so the report says whether every
worker was observed.  Also counted: answers whose rule does not belong to
their revision (a decision mixing two revisions), and answers with an
older revision after a newer one on the same connection.  Prints JSON.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MAX_SECONDS = 300
MAX_CONNECTIONS = 64
SWITCH_DEADLINE = 10.0
JITAUTH = [sys.executable, "-m", "jitauth"]


def _policies(directory: str) -> tuple:
    """The demo policy (A) and a copy whose view rule has another id (B)."""
    from importlib import resources

    text = resources.files("jitauth.demo").joinpath("policy.yaml") \
        .read_text(encoding="utf-8")
    assert "id: view-reports\n" in text
    paths = []
    for name, rule in (("a", "view-reports"), ("b", "view-reports-b")):
        path = os.path.join(directory, "policy-%s.yaml" % name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("id: view-reports\n", "id: %s\n" % rule))
        paths.append((path, rule))
    return tuple(paths)


def _socket_inodes(pid) -> set:
    inodes = set()
    fd_dir = "/proc/%s/fd" % pid
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_by_inode() -> dict:
    """inode -> (local port, remote port) of the machine's TCP sockets."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local = int(fields[1].rsplit(":", 1)[1], 16)
                    remote = int(fields[2].rsplit(":", 1)[1], 16)
                    out[int(fields[9])] = (local, remote)
        except OSError:
            pass
    return out


def _children(pid: int) -> list:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        # The command may hold spaces: the ppid follows the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(name))
    return found


def connections_per_worker(server_pid: int, port: int) -> dict:
    """Worker pid -> how many of this process's connections it serves.

    Workers are the server's children listening on ``port``.
    """
    sockets = _tcp_by_inode()
    ours = {sockets[i][0] for i in _socket_inodes("self") if i in sockets
            and sockets[i][1] == port}
    served = {}
    for child in _children(server_pid):
        ends = [sockets[i] for i in _socket_inodes(child) if i in sockets]
        if (port, 0) not in ends:
            continue
        served[child] = sum(1 for local, remote in ends
                            if local == port and remote in ours)
    return served


class Load:
    """Connections, each with one Authorize call in flight at a time."""

    def __init__(self, target: str, connections: int, deadline: float):
        import grpc

        from jitauth.v1 import authorizer_pb2 as pb

        self.stop = threading.Event()
        self.deadline = deadline
        self.lock = threading.Lock()
        self.calls = 0
        self.failures = []
        # Per connection: (time received, revision, rule id) of answers.
        self.answers = [[] for _ in range(connections)]
        self.channels = [grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(connections)]
        # Not a dry run: every allow issues a grant, one LMDB write each,
        # which competes with apply for the writer lock.
        self.request = pb.AuthorizeRequest(
            account_id="acme", subject=pb.Subject(id="alice"),
            action="reports.view",
            resource=pb.Resource(type="report", id="q3-revenue"))
        self.pb = pb
        self.grpc = grpc
        self.threads = [threading.Thread(target=self._drive, args=(i,),
                                         daemon=True)
                        for i in range(connections)]

    def start(self) -> None:
        for channel in self.channels:
            self.grpc.channel_ready_future(channel).result(timeout=10)
        for thread in self.threads:
            thread.start()

    def _drive(self, index: int) -> None:
        call = self.channels[index].unary_unary(
            "/jitauth.v1.Authorizer/Authorize",
            request_serializer=self.pb.AuthorizeRequest.SerializeToString,
            response_deserializer=self.pb.AuthorizeResponse.FromString)
        answers = self.answers[index]
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                answer = call(self.request, timeout=5)
            except self.grpc.RpcError as exc:
                with self.lock:
                    self.failures.append((time.monotonic(),
                                          exc.code().name))
                continue
            answers.append((time.monotonic(), answer.revision,
                            answer.rule_id))
            with self.lock:
                self.calls += 1

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for channel in self.channels:
            channel.close()

    def first_at_least(self, revision: int, since: int) -> list:
        """Per connection, the first answer time with ``revision`` or
        newer among answers from index ``since`` on (None: not yet)."""
        out = []
        for answers, start in zip(self.answers, since, strict=True):
            found = None
            for received, rev, _ in answers[start:]:
                if rev >= revision:
                    found = received
                    break
            out.append(found)
        return out


def _serve(data_dir: str, workers: int) -> tuple:
    proc = subprocess.Popen(
        JITAUTH + ["--log-level", "WARNING", "serve", "--data", data_dir,
                   "--listen", "127.0.0.1:0", "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r" on (\S+)$", line.strip())
    if match is None:
        proc.kill()
        proc.wait(timeout=10)
        raise RuntimeError("jitauth serve did not start: %r" % line)
    return proc, match.group(1)


def _wait_serving(target: str, timeout: float = 30.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(),
                                      timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError("%s is not SERVING" % target)


def run(workers: int = 2, connections: int = 8, rounds: int = 5,
        interval: float = 1.0, max_seconds: float = 120.0,
        in_process: bool = False) -> dict:
    """Run the bench; return its figures as a dict."""
    from jitauth.demo import write_sources
    from jitauth.loader import load

    connections = max(1, min(connections, MAX_CONNECTIONS))
    max_seconds = min(max_seconds, MAX_SECONDS)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jitauth-apply-") as tmp:
        (policy_a, rule_a), (policy_b, rule_b) = _policies(tmp)
        _, licenses = write_sources(os.path.join(tmp, "source"))
        data_dir = os.path.join(tmp, "data")
        first = load(data_dir, policy_a, [licenses])
        rule_of = {first: rule_a}

        proc, target = _serve(data_dir, workers)
        load_ = None
        try:
            _wait_serving(target)
            load_ = Load(target, connections, started + max_seconds)
            load_.start()
            time.sleep(interval)
            served = connections_per_worker(proc.pid,
                                            int(target.rsplit(":", 1)[1]))
            results = []
            for number in range(rounds):
                if time.monotonic() + interval + SWITCH_DEADLINE > \
                        started + max_seconds:
                    break
                policy, rule = ((policy_b, rule_b) if number % 2 == 0
                                else (policy_a, rule_a))
                results.append(_round(load_, data_dir, policy, rule,
                                      rule_of, in_process))
                time.sleep(interval)
        finally:
            if load_ is not None:
                load_.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    mixed = backwards = 0
    for answers in load_.answers:
        newest = 0
        for _, revision, rule in answers:
            if rule_of.get(revision) != rule:
                mixed += 1
            if revision < newest:
                backwards += 1
            newest = max(newest, revision)
    switches = [r["switch_ms"] for r in results
                if r["switch_ms"] is not None]
    return {
        "workers": workers,
        "connections": connections,
        "apply": "in process" if in_process else "jitauth apply",
        "connections_per_worker": {str(k): v for k, v in served.items()},
        "every_worker_observed": bool(served) and all(served.values()),
        "rounds": results,
        "switch_ms_max": max(switches) if switches else None,
        "switch_ms_median": statistics.median(switches)
        if switches else None,
        "calls": load_.calls,
        "failed_calls": len(load_.failures),
        "failures": sorted({code for _, code in load_.failures}),
        "answers_mixing_revisions": mixed,
        "answers_older_than_seen": backwards,
        "seconds": round(time.monotonic() - started, 1),
    }


def _apply(data_dir: str, policy: str, in_process: bool) -> int:
    if in_process:
        from jitauth.revisions import apply

        return apply(data_dir, policy)
    done = subprocess.run(JITAUTH + ["--log-level", "WARNING", "apply",
                                     "--data", data_dir, "--policy",
                                     policy],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError("jitauth apply failed: %s" % done.stderr)
    return int(done.stdout.strip())


def _round(load_: Load, data_dir: str, policy: str, rule: str,
           rule_of: dict, in_process: bool) -> dict:
    since = [len(answers) for answers in load_.answers]
    failed_before = len(load_.failures)
    began = time.monotonic()
    revision = _apply(data_dir, policy, in_process)
    returned = time.monotonic()
    rule_of[revision] = rule

    deadline = returned + SWITCH_DEADLINE
    seen = load_.first_at_least(revision, since)
    while None in seen and time.monotonic() < deadline:
        time.sleep(0.005)
        seen = load_.first_at_least(revision, since)
    last = None
    if None not in seen:
        last = (max(seen) - returned) * 1000
    return {
        "revision": revision,
        "apply_ms": round((returned - began) * 1000, 1),
        # Negative: every connection had its first answer with the new
        # revision before apply returned (it commits, then flushes).
        "last_switch_vs_return_ms": None if last is None
        else round(last, 2),
        "switch_ms": None if last is None else round(max(0.0, last), 2),
        "connections_switched": sum(s is not None for s in seen),
        "failed_calls": len(load_.failures) - failed_before,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds of load between two applies")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--in-process", action="store_true",
                        help="apply by calling jitauth.revisions.apply here "
                        "instead of running jitauth apply")
    args = parser.parse_args(argv)

    figures = run(args.workers, args.connections, args.rounds,
                  args.interval, args.max_seconds, args.in_process)
    print(json.dumps(figures, indent=2))
    ok = (figures["failed_calls"] == 0
          and figures["answers_mixing_revisions"] == 0
          and all(r["switch_ms"] is not None for r in figures["rounds"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
