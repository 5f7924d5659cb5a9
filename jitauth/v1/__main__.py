"""Regenerate the gRPC stubs of ``jitauth.v1`` from ``proto/``.

Run from a source checkout (grpcio-tools comes with the ``test`` extra)::

    python -m jitauth.v1

The generated ``authorizer_pb2*.py`` files are committed; ``tests/
test_stubs.py`` fails when they no longer match the proto.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO_FILES = ["jitauth/v1/authorizer.proto", "jitauth/v1/admin.proto"]
GENERATED = ["authorizer_pb2.py", "authorizer_pb2.pyi",
             "authorizer_pb2_grpc.py", "admin_pb2.py", "admin_pb2.pyi",
             "admin_pb2_grpc.py"]


def generate(out_dir: str) -> None:
    """Write the stubs under ``out_dir`` (``out_dir/jitauth/v1/...``)."""
    import importlib.resources

    from grpc_tools import protoc

    # protoc's own well-known types (timestamp.proto) ship with grpc_tools.
    builtin = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", "-I", PROTO_DIR, "-I", builtin,
            "--python_out=" + out_dir,
            "--pyi_out=" + out_dir, "--grpc_python_out=" + out_dir]
    args += PROTO_FILES
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: %s" % " ".join(args))


if __name__ == "__main__":
    generate(ROOT)
    print("regenerated %s in %s" % (", ".join(GENERATED),
                                    os.path.join(ROOT, "jitauth", "v1")))
    sys.exit(0)
