"""The external programs a run uses: where they are and their versions.

h2load and nghttpd come from Debian's ``nghttp2-client`` and
``nghttp2-server``; Cerbos from the npm package
``@cerbos/cerbos-linux-x64`` (pinned to 0.55.0), installed with npm under
the peers directory.  A tool that is missing and cannot be installed is
reported with the reason; the suites that need it skip those figures.
"""

import os
import shutil
import subprocess

CERBOS_PACKAGE = "@cerbos/cerbos-linux-x64"
CERBOS_VERSION = "0.55.0"


class Missing(RuntimeError):
    """A tool is not there and was not installed; the message says why."""


def _run(argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True,
                          timeout=timeout)


def _version(argv) -> str:
    try:
        out = _run(argv, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else ""


def debian(binary: str, package: str, config) -> str:
    """Path of ``binary``; apt-get installs ``package`` if allowed."""
    path = shutil.which(binary)
    if path:
        return path
    if not config.install_peers:
        raise Missing("%s not found (Debian package %s; --no-install "
                      "given)" % (binary, package))
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise Missing("%s not found; install Debian package %s"
                      % (binary, package))
    try:
        _run(["apt-get", "install", "-y", "-q", package])
    except (OSError, subprocess.SubprocessError) as exc:
        raise Missing("apt-get install %s failed: %s"
                      % (package, exc)) from exc
    path = shutil.which(binary)
    if not path:
        raise Missing("apt-get install %s did not provide %s"
                      % (package, binary))
    return path


def cerbos(config) -> str:
    """Path of the Cerbos binary; npm installs it under the peers dir."""
    path = os.path.join(config.peers_dir, "node_modules", CERBOS_PACKAGE,
                        "cerbos-linux-x64")
    if os.access(path, os.X_OK):
        return path
    if not config.install_peers:
        raise Missing("Cerbos is not installed in %s (--no-install given)"
                      % config.peers_dir)
    if not shutil.which("npm"):
        raise Missing("npm is not installed; cannot fetch %s"
                      % CERBOS_PACKAGE)
    os.makedirs(config.peers_dir, exist_ok=True)
    try:
        out = _run(["npm", "install", "--prefix", config.peers_dir,
                    "--no-audit", "--no-fund",
                    "%s@%s" % (CERBOS_PACKAGE, CERBOS_VERSION)])
    except (OSError, subprocess.SubprocessError) as exc:
        raise Missing("npm install %s failed: %s"
                      % (CERBOS_PACKAGE, exc)) from exc
    if out.returncode != 0 or not os.access(path, os.X_OK):
        raise Missing("npm install %s failed: %s" % (
            CERBOS_PACKAGE, (out.stderr or out.stdout).strip()[-300:]))
    return path


def versions(config) -> dict:
    """Versions of the tools already present (nothing is installed here)."""
    out = {}
    for name in ("h2load", "nghttpd"):
        path = shutil.which(name)
        if path:
            out[name] = _version([path, "--version"]).split("/")[-1]
    path = os.path.join(config.peers_dir, "node_modules", CERBOS_PACKAGE,
                        "cerbos-linux-x64")
    if os.access(path, os.X_OK):
        out["cerbos"] = _version([path, "--version"])
    return out
