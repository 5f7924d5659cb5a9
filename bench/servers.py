"""The servers a suite starts: jitauth, Cerbos and nghttpd, on loopback.

Every server binds 127.0.0.1 on a port picked free just before it starts,
is waited for with a bounded deadline, and is stopped through the
``Server`` handle that started it: SIGTERM to its own pid, then SIGKILL
after a grace period.  Nothing else is ever signalled.
"""

import os
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"
START_SECONDS = 60.0


class StartFailed(RuntimeError):
    """A server did not come up; the message holds the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


class Server:
    """A process we started; ``pid`` is its own, ``log_path`` its output."""

    def __init__(self, name: str, argv: list, port: int, log_path: str,
                 env=None, cwd=None):
        self.name = name
        self.port = port
        self.target = "%s:%d" % (HOST, port)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.pid = self.process.pid

    def wait_ready(self, ready=None, seconds: float = START_SECONDS):
        """Wait for the port (and ``ready()``, if given) within a deadline."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartFailed("%s exited with %s: %s" % (
                    self.name, self.process.returncode, self.log_tail()))
            if _port_open(self.port) and (ready is None or ready()):
                return self
            time.sleep(0.1)
        self.stop()
        raise StartFailed("%s not ready after %.0fs: %s"
                          % (self.name, seconds, self.log_tail()))

    def log_tail(self, size: int = 600) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def jitauth(data_dir: str, workers: int, log_dir: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "jitauth", "--log-level", "WARNING",
            "serve", "--data", data_dir, "--listen", "%s:%d" % (HOST, port),
            "--workers", str(workers)]
    env = dict(os.environ)
    env.setdefault("OTEL_TRACES_EXPORTER", "none")
    server = Server("jitauth", argv, port,
                    os.path.join(log_dir, "jitauth.log"), env=env)
    return server


def cerbos(binary: str, policy_dir: str, work_dir: str) -> Server:
    grpc_port, http_port, debug_port = free_port(), free_port(), free_port()
    config_path = os.path.join(work_dir, "cerbos.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(
            "server:\n"
            "  grpcListenAddr: \"%s:%d\"\n"
            "  httpListenAddr: \"%s:%d\"\n"
            "storage:\n"
            "  driver: disk\n"
            "  disk:\n"
            "    directory: %s\n"
            "    watchForChanges: false\n"
            "audit:\n"
            "  enabled: false\n"
            "telemetry:\n"
            "  disabled: true\n"
            % (HOST, grpc_port, HOST, http_port, policy_dir))
    argv = [binary, "server", "--config", config_path, "--log-level",
            "warn", "--debug-listen-addr", "%s:%d" % (HOST, debug_port)]
    env = dict(os.environ, CERBOS_NO_TELEMETRY="1")
    return Server("cerbos", argv, grpc_port,
                  os.path.join(work_dir, "cerbos.log"), env=env)


def nghttpd(binary: str, docroot: str, work_dir: str) -> Server:
    port = free_port()
    argv = [binary, "--no-tls", "--address", HOST, "-d", docroot,
            str(port)]
    return Server("nghttpd", argv, port,
                  os.path.join(work_dir, "nghttpd.log"))


def grpc_floor(workers: int, work_dir: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor_server", "--port", str(port),
            "--workers", str(workers)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return Server("grpc-floor", argv, port,
                  os.path.join(work_dir, "grpc-floor.log"), cwd=root)
