"""The engines the matcher suite times, each behind the same small API.

An engine is built from a ``bench.workload.Workload`` and offers:

- ``inputs(requests)``: each request in the engine's native input form,
  built before timing starts;
- ``decide(item)``: True for allow, False for deny;
- ``name``, ``version`` and ``notes`` (how the policy was translated).

jitauth's engines read each license from the LMDB environment inside
``decide``; the peers are handed the license facts inside their pre-built
inputs, so their timings leave out the look-up.  That favours the peers.
"""

import importlib

#: name -> module path; the module's ``build(workload)`` returns an engine
#: or raises ``Unavailable`` with the reason.
ENGINES = {
    "jitauth-compiled": "bench.engines.jitauth_engines",
    "jitauth-reference": "bench.engines.jitauth_engines",
    "regorus": "bench.engines.rego",
    "cel": "bench.engines.cel_engine",
    "cedar": "bench.engines.cedar",
    "casbin": "bench.engines.casbin_engine",
}
OWN = ("jitauth-compiled", "jitauth-reference")
PEERS = ("regorus", "cel", "cedar", "casbin")


class Unavailable(RuntimeError):
    """The engine cannot run here; the message says why."""


def build(name: str, workload):
    """The engine ``name`` prepared for ``workload``; raises Unavailable."""
    try:
        module = importlib.import_module(ENGINES[name])
    except ImportError as exc:
        raise Unavailable("cannot import: %s" % exc) from exc
    return module.build(name, workload)


def package_version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
