"""The committed gRPC stubs are the ones the proto generates today."""

import os

import pytest

from jitauth.v1.__main__ import GENERATED, ROOT, generate

pytest.importorskip("grpc_tools")


@pytest.mark.parametrize("name", GENERATED)
def test_committed_stubs_are_fresh(tmp_path, name):
    generate(str(tmp_path))

    with open(os.path.join(tmp_path, "jitauth", "v1", name), "rb") as f:
        fresh = f.read()
    with open(os.path.join(ROOT, "jitauth", "v1", name), "rb") as f:
        committed = f.read()

    assert committed == fresh, (
        "jitauth/v1/%s is stale: run `python -m jitauth.v1`" % name)
