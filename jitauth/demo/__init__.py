"""The demo data set: a policy, a few named accounts and thousands more.

``ensure_demo`` writes the source files next to the store and loads them
once.  The named accounts are the README's quickstart:

- ``acme``: enterprise, active: alice (analyst) may export reports;
- ``globex``: free plan: the same export is denied as not entitled;
- ``initech``: business, suspended: every request is denied;
- any other name, such as ``nobody``: no license.
"""

import json
import os
import random
from importlib import resources

from jitauth.loader import load

DEMO_ACCOUNTS = 5000
_SEED = 20261204

_NAMED = [
    {"account": "acme", "plan": "enterprise", "status": "active",
     "valid_from": "2026-01-01T00:00:00Z",
     "valid_until": "2099-01-01T00:00:00Z", "entitlements": ["sso"],
     "limits": {"exports.concurrent": 25},
     "attributes": {"data_residency": "us", "industry": "manufacturing"}},
    {"account": "globex", "plan": "free", "status": "active",
     "attributes": {"data_residency": "us"}},
    {"account": "initech", "plan": "business", "status": "suspended",
     "valid_from": "2025-06-01T00:00:00Z",
     "valid_until": "2099-06-01T00:00:00Z",
     "attributes": {"data_residency": "eu"}},
]


def demo_licenses(count: int = DEMO_ACCOUNTS, seed: int = _SEED) -> list:
    """The named accounts plus ``count`` generated ones, deterministic."""
    rng = random.Random(seed)
    plans = ["free"] * 4 + ["team"] * 3 + ["business"] * 2 + ["enterprise"]
    licenses = list(_NAMED)
    for number in range(1, count + 1):
        start_year = rng.choice([2024, 2025, 2026])
        lic = {
            "account": "acct-%05d" % number,
            "plan": rng.choice(plans),
            "status": rng.choices(["active", "suspended", "revoked"],
                                  [94, 4, 2])[0],
            "valid_from": "%d-%02d-01T00:00:00Z"
                          % (start_year, rng.randint(1, 12)),
            "valid_until": "%d-%02d-01T00:00:00Z"
                           % (start_year + rng.choice([1, 3, 75]),
                              rng.randint(1, 12)),
            "attributes": {"data_residency": rng.choice(["us", "eu"]),
                           "employees": rng.randint(1, 20000)},
        }
        if rng.random() < 0.1:
            lic["entitlements"] = ["sso"]
        licenses.append(lic)
    return licenses


def write_sources(directory: str) -> tuple:
    """Write ``policy.yaml`` and ``licenses.jsonl``; return their paths."""
    os.makedirs(directory, exist_ok=True)
    policy_path = os.path.join(directory, "policy.yaml")
    licenses_path = os.path.join(directory, "licenses.jsonl")
    policy = resources.files(__package__).joinpath("policy.yaml")
    with open(policy_path, "w", encoding="utf-8") as f:
        f.write(policy.read_text(encoding="utf-8"))
    with open(licenses_path, "w", encoding="utf-8") as f:
        for lic in demo_licenses():
            f.write(json.dumps(lic) + "\n")
    return policy_path, licenses_path


def ensure_demo(data_dir: str) -> None:
    """Create and load the demo data in ``data_dir`` unless already there."""
    if os.path.exists(os.path.join(data_dir, "data.mdb")):
        return
    policy_path, licenses_path = write_sources(
        os.path.join(data_dir, "source"))
    load(data_dir, policy_path, [licenses_path])
