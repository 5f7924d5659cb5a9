"""A gRPC server that decides nothing: the floor of Python gRPC serving.

It answers every unary call with an empty message, from the same shape
of server that ``jitauth serve`` runs: N worker processes sharing one
port on 127.0.0.1 (``SO_REUSEPORT``), each a grpcio server with a thread
pool.  The gap between this floor and jitauth is what deciding,
converting and tracing cost; the floor itself is grpcio's.

    python -m bench.floor_server --port 50099 --workers 2
"""

import argparse
import multiprocessing
import signal
import threading
from concurrent import futures

HOST = "127.0.0.1"
THREADS = 8


class _AnyMethod:
    """A generic handler: every method is unary and returns b''."""

    def service(self, details):
        import grpc

        return grpc.unary_unary_rpc_method_handler(lambda request, ctx: b"")


def _worker(port: int) -> None:
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(THREADS),
                         handlers=[_AnyMethod()],
                         options=[("grpc.so_reuseport", 1)])
    server.add_insecure_port("%s:%d" % (HOST, port))
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(args.port,))
               for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
