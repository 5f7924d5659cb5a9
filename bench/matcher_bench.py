"""Time one decision of each matcher through ``match_stored``.

Builds, in a temporary directory, an LMDB environment holding 100,000
licenses and a compiled policy of 1,000 rules (exact, prefix and ``*``
actions; string, number, address and time conditions; some deny rules),
then times single decisions of random requests with both matchers and
prints the medians in nanoseconds and their ratio.

    python bench/matcher_bench.py [--decisions N] [--seed S]

Loops are bounded by ``--decisions`` and by ``--seconds`` per matcher.
"""

import argparse
import collections
import random
import statistics
import tempfile
import time

from jitauth._core import Environment, Matcher
from jitauth.licenses import License, encode_license
from jitauth.model import LicenseStatus, Reason
from jitauth.reference import ReferenceMatcher

ACCOUNTS = 100_000
RULES = 1_000
SERVICES = 40
VERBS = ["read", "write", "export", "delete", "share", "list", "admin",
         "approve", "run", "view"]
TYPES = ["report", "dataset", "job", "dashboard", "model"]
ROLES = ["viewer", "analyst", "editor", "admin", "auditor", "ops"]
PLANS = ["free", "team", "pro", "enterprise"]
REGIONS = ["eu", "us", "apac"]
REVISION = 1


def entitlement(service: int) -> str:
    return "svc%d.use" % service


def make_policy(rng: random.Random) -> dict:
    plans = {}
    for level, name in enumerate(PLANS):
        plans[name] = {
            "entitlements": sorted(entitlement(s) for s in range(SERVICES)
                                   if s % len(PLANS) <= level),
            "limits": {"concurrent": 2 + 4 * level},
        }

    rules = []
    for i in range(RULES):
        service = rng.randrange(SERVICES)
        effect = "deny" if rng.random() < 0.08 else "allow"
        shape = rng.random()
        if shape < 0.75:
            actions = ["svc%d.%s" % (service, rng.choice(VERBS))]
        elif shape < 0.99:
            actions = ["svc%d.*" % service]
        else:
            actions = ["*"]
        when = []
        if rng.random() < 0.5:
            when.append({"attr": "context.env", "op": "eq",
                         "value": rng.choice(["prod", "staging"])})
        if rng.random() < 0.3:
            when.append({"attr": "context.region", "op": "in",
                         "value": rng.sample(REGIONS, 2)})
        if rng.random() < 0.2:
            when.append({"attr": "subject.level", "op": "gte",
                         "value": float(rng.randrange(1, 5))})
        if rng.random() < 0.1:
            when.append({"attr": "context.source_ip", "op": "cidr",
                         "value": ["10.0.0.0/8", "2001:db8::/32"]})
        if rng.random() < 0.05:
            when.append({"op": "time", "from": 480, "to": 1200,
                         "days": 0b0011111, "tz": 0})
        if rng.random() < 0.1:
            when.append({"attr": "license.tier", "op": "ne",
                         "value": "trial"})
        rules.append({
            "id": "rule-%d" % i,
            "effect": effect,
            "actions": actions,
            "resource_types": [rng.choice(TYPES + ["*"])],
            "resource_ids": [rng.choice(["*", "*", "proj-*", "proj-7"])],
            "roles": rng.sample(ROLES, rng.choice([0, 1, 2])),
            "entitlement": (entitlement(service)
                            if effect == "allow" and rng.random() < 0.7
                            else None),
            "when": when,
            "ttl_ms": 60_000 if effect == "allow" else 0,
            "limit": ("concurrent" if effect == "allow"
                      and rng.random() < 0.5 else None),
        })
    return {"format": 1, "plans": plans, "timezones": ["Europe/Berlin"],
            "rules": rules}


def make_license(rng: random.Random, i: int) -> bytes:
    return encode_license(License(
        account_id="acct-%06d" % i,
        plan=rng.choice(PLANS),
        status=(LicenseStatus.ACTIVE if rng.random() < 0.97
                else LicenseStatus.SUSPENDED),
        valid_until_ms=(None if rng.random() < 0.8
                        else 1_900_000_000_000),
        entitlements=tuple(rng.sample([entitlement(s)
                                       for s in range(SERVICES)], 2)),
        limits={"concurrent": 3} if rng.random() < 0.2 else {},
        attributes={"tier": rng.choice(["trial", "paid"]),
                    "region": rng.choice(REGIONS),
                    "seats": str(rng.randrange(1, 500))},
    ))


def make_request(rng: random.Random) -> tuple:
    return (
        "acct-%06d" % rng.randrange(int(ACCOUNTS * 1.02)),
        "user-%d" % rng.randrange(1000),
        rng.sample(ROLES, rng.choice([1, 2])),
        {"level": str(rng.randrange(0, 6))},
        "svc%d.%s" % (rng.randrange(SERVICES), rng.choice(VERBS)),
        rng.choice(TYPES),
        "proj-%d" % rng.randrange(20),
        {"owner": "user-1"},
        {"env": rng.choice(["prod", "prod", "staging"]),
         "region": rng.choice(REGIONS),
         "source_ip": rng.choice(["10.1.2.3", "192.168.0.1",
                                  "2001:db8::7"])},
    )


def timed(matcher, env, count, seed, now_ms, seconds, stored=True):
    """Samples of ``count`` decisions on fresh requests.

    Each request is built just before it is decided, as a server parses
    one just before deciding it.  With ``stored`` the whole path is timed
    (``match_stored``: transaction, revision, license look-up, matching);
    without, only the matching (``match``, the record read beforehand).
    """
    meta, licenses = env.dbs["meta"], env.dbs["licenses"]
    clock = time.perf_counter_ns
    rng = random.Random(seed)
    samples = []
    reasons = collections.Counter()
    deadline = time.monotonic() + seconds
    for _ in range(count):
        request = make_request(rng)
        if stored:
            start = clock()
            result = matcher.match_stored(env, meta, licenses, *request,
                                          now_ms)
        else:
            with env.begin() as txn:
                record = txn.get(licenses, request[0].encode())
            start = clock()
            result = matcher.match(record, *request, now_ms)
        samples.append(clock() - start)
        reasons[Reason(result[0]).name] += 1
        if time.monotonic() > deadline:
            break
    return samples, reasons


def timer_overhead() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10_000):
        start = clock()
        samples.append(clock() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    policy = make_policy(rng)
    now_ms = 1_717_581_600_000  # 2024-06-05 10:00 UTC, a Wednesday

    with tempfile.TemporaryDirectory() as path:
        env = Environment(path, ["meta", "licenses"], sync=False)
        with env.begin(write=True) as txn:
            txn.put(env.dbs["meta"], b"revision",
                    REVISION.to_bytes(8, "big"))
            for i in range(ACCOUNTS):
                txn.put(env.dbs["licenses"], b"acct-%06d" % i,
                        make_license(rng, i))

        compiled = Matcher(policy, REVISION)
        reference = ReferenceMatcher(policy, REVISION)
        results = {}
        for name, matcher in (("compiled", compiled),
                              ("reference", reference)):
            for stored in (True, False):
                # Warm up the caches (candidate lists, zone offsets, pages).
                timed(matcher, env, 2000, 0, now_ms, args.seconds, stored)
                results[name, stored] = timed(
                    matcher, env, args.decisions, args.seed, now_ms,
                    args.seconds, stored)
        overhead = timer_overhead()
        env.close()

    samples, reasons = results["compiled", True]
    print("%d licenses, %d rules, %d decisions per line"
          % (ACCOUNTS, RULES, len(samples)))
    print("outcomes: %s" % ", ".join(
        "%s %.1f%%" % (name, 100 * n / len(samples))
        for name, n in reasons.most_common()))
    print("timer overhead (median, included below): %.0f ns" % overhead)
    for stored, what in ((True, "match_stored (whole path)"),
                         (False, "match (matching only)")):
        print(what)
        medians = {}
        for name in ("compiled", "reference"):
            samples = results[name, stored][0]
            medians[name] = statistics.median(samples)
            print("  %-9s median %8.0f ns   p99 %8.0f ns"
                  % (name, medians[name],
                     statistics.quantiles(samples, n=100)[98]))
        print("  ratio (reference / compiled): %.1fx"
              % (medians["reference"] / medians["compiled"]))


if __name__ == "__main__":
    main()
