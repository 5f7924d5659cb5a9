"""What a run ran on: machine, versions, git commit; process CPU and memory.

CPU time and memory of a server come from ``/proc``: ``stat`` for user and
system ticks, ``smaps_rollup`` for RSS and PSS (PSS divides shared pages,
such as the LMDB memory map, among the processes that map them).
"""

import os
import platform
import subprocess
import sys
import time

from bench.engines import package_version

PACKAGES = ("jitauth", "grpcio", "protobuf", "gordon-to-regorus",
            "common-expression-language", "cedarpy", "pycasbin", "cerbos",
            "matplotlib")
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def git_commit(root: str) -> dict:
    def git(*args):
        return subprocess.run(("git",) + args, cwd=root, text=True,
                              capture_output=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain",
                                  "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def describe(root: str, tools: dict) -> dict:
    """The machine, the software versions and the git commit of a run."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": {p: package_version(p) for p in PACKAGES},
        "tools": tools,
        "git": git_commit(root),
        "argv": sys.argv,
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


_MEMORY_KEYS = {"Rss": "rss", "Pss": "pss", "Anonymous": "anon",
                "Private_Dirty": "private_dirty"}


def memory_kib(pid: int) -> dict:
    """RSS, PSS, anonymous and private dirty memory of ``pid`` in KiB.

    From ``smaps_rollup``.  RSS and PSS include the pages of the LMDB
    memory map the process has touched (file pages, shared, reclaimable);
    ``anon`` is the process's own heap and stacks.
    """
    out = dict.fromkeys(_MEMORY_KEYS.values(), 0)
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in _MEMORY_KEYS:
                    out[_MEMORY_KEYS[key]] = int(rest.split()[0])
    except OSError:
        pass
    return out


def children(pid: int) -> list:
    """Direct child pids of ``pid``."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def command_line(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def spawned_workers(pid: int) -> list:
    """Children of ``pid`` started by multiprocessing's spawn method.

    This leaves out the resource tracker, which is also a child.
    """
    return [c for c in children(pid) if "spawn_main" in command_line(c)]


def process_tree(pid: int) -> list:
    out = [pid]
    for child in children(pid):
        out += process_tree(child)
    return out
