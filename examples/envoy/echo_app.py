"""A stand-in for the application behind Envoy: answers every request with
the headers it received, as JSON, so you can see what jitauth added.

    python3 examples/envoy/echo_app.py [--port 8000]

Binds 127.0.0.1 only.  Add ``?status=503`` to a request to get that
status back (the access log then completes the grant as a failure).
"""

import argparse
import http.server
import json
from urllib.parse import parse_qs, urlsplit


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        query = parse_qs(urlsplit(self.path).query)
        status = int(query.get("status", ["200"])[0])
        body = json.dumps({
            "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Echo)
    print("echoing on 127.0.0.1:%d" % args.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
