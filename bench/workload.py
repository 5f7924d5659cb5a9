"""The licensing workload every engine decides: accounts, rules, requests.

One seeded generator makes a dataset of licensed accounts, a rule set and a
mix of requests, and writes them as a jitauth policy (YAML) and licenses
(JSON Lines) that ``jitauth.loader.load`` stores in a real LMDB
environment.  The peers get the same facts through ``Rule``, ``Account``
and ``Request`` objects, which ``bench.peers`` translates into each
engine's own policy language.

The rule set, per product *area* ``a`` (five rules each):

- ``area<a>.view``: any role; no condition.
- ``area<a>.edit``: editor or admin; ``context.env`` in prod, staging.
- ``area<a>.export``: analyst or admin; ``subject.level`` >= 3 and
  ``context.env`` = prod.
- ``area<a>.share``: editor, analyst or admin; ``license.sharing`` = on.
- ``area<a>.admin``: admin; ``subject.mfa`` = true.

Each rule applies to resource type ``kind<a>``; every third rule only to
resource ids starting ``doc-``.  Each needs entitlement ``area<a>``, which
plans of rank ``a % 4`` and above include (free, team, business,
enterprise); accounts may buy areas beyond their plan.  Three deny rules
come first: embargoed countries, EU data residency outside EU regions, and
locked subjects.  Conditions use only operators that every peer has
natively (equality, set membership, numeric comparison, prefix): no CIDR
and no time windows, which CEL and Casbin lack out of the box.
"""

import json
import os
import random
from dataclasses import dataclass, field

PLANS = ("free", "team", "business", "enterprise")
OPS = ("view", "edit", "export", "share", "admin")
OP_ROLES = {
    "view": (),
    "edit": ("editor", "admin"),
    "export": ("analyst", "admin"),
    "share": ("editor", "analyst", "admin"),
    "admin": ("admin",),
}
ROLES = ("editor", "analyst", "admin")
ENVS = ("prod", "staging")
EMBARGOED = ("KP", "IR", "SY", "CU")
EU_REGIONS = ("eu-west-1", "eu-central-1")
REGIONS = EU_REGIONS + ("us-east-1", "ap-south-1")
COUNTRIES = ("US", "DE", "FR", "JP", "BR")
DENY_RULES = ("embargo", "eu-residency", "locked-subject")
MIN_EXPORT_LEVEL = 3

# Far enough from any run's clock that every engine agrees on validity.
VALID_SINCE_MS = 1_577_836_800_000      # 2020-01-01
EXPIRED_AT_MS = 1_609_459_200_000       # 2021-01-01
NOT_BEFORE_MS = 4_070_908_800_000       # 2099-01-01
OPEN_FROM_MS = 0
OPEN_UNTIL_MS = 2**53


@dataclass(slots=True, frozen=True)
class Rule:
    """One allow rule of the generated set (the deny rules are fixed)."""

    index: int
    area: int
    op: str

    @property
    def id(self) -> str:
        return "r%d-%s" % (self.area, self.op)

    @property
    def action(self) -> str:
        return "area%d.%s" % (self.area, self.op)

    @property
    def resource_type(self) -> str:
        return "kind%d" % self.area

    @property
    def id_prefix(self) -> str:
        """Resource ids the rule applies to start with this ("" = any)."""
        return "doc-" if self.index % 3 == 2 else ""

    @property
    def roles(self) -> tuple:
        return OP_ROLES[self.op]

    @property
    def entitlement(self) -> str:
        return "area%d" % self.area

    @property
    def plans(self) -> tuple:
        """The plans whose entitlements include this rule's."""
        return PLANS[self.area % 4:]


@dataclass(slots=True)
class Account:
    """A license: what one account bought, and until when."""

    id: str
    plan: str
    status: str
    valid_from_ms: int | None
    valid_until_ms: int | None
    entitlements: tuple
    attributes: dict

    def json(self) -> dict:
        out = {"account": self.id, "plan": self.plan, "status": self.status}
        if self.valid_from_ms is not None:
            out["valid_from"] = _rfc3339(self.valid_from_ms)
        if self.valid_until_ms is not None:
            out["valid_until"] = _rfc3339(self.valid_until_ms)
        if self.entitlements:
            out["entitlements"] = list(self.entitlements)
        out["attributes"] = self.attributes
        return out

    def facts(self) -> dict:
        """The license as plain values, the form handed to the peers."""
        return {
            "plan": self.plan,
            "status": self.status,
            "valid_from": (OPEN_FROM_MS if self.valid_from_ms is None
                           else self.valid_from_ms),
            "valid_until": (OPEN_UNTIL_MS if self.valid_until_ms is None
                            else self.valid_until_ms),
            "entitlements": list(self.entitlements),
            "attributes": dict(self.attributes),
        }


#: The license facts of an account that has none (every engine denies).
NO_LICENSE = {"plan": "", "status": "none", "valid_from": OPEN_FROM_MS,
              "valid_until": OPEN_UNTIL_MS, "entitlements": [],
              "attributes": {}}


@dataclass(slots=True)
class Request:
    account_id: str
    subject_id: str
    roles: tuple
    subject_attributes: dict
    action: str
    resource_type: str
    resource_id: str
    context: dict
    resource_attributes: dict = field(default_factory=dict)


def _rfc3339(ms: int) -> str:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def account_id(n: int) -> str:
    return "acct-%08d" % n


def make_rules(n_rules: int) -> list:
    """``n_rules`` rules in all: the three denies and the allow rules."""
    count = max(len(OPS), n_rules - len(DENY_RULES))
    return [Rule(i, i // len(OPS), OPS[i % len(OPS)]) for i in range(count)]


def n_areas(rules: list) -> int:
    return rules[-1].area + 1


def make_account(n: int, areas: int, seed: int) -> Account:
    """Account number ``n``; the same ``seed`` always gives the same one."""
    rnd = random.Random(seed * 1_000_003 + n)
    plan = rnd.choices(PLANS, (30, 30, 25, 15))[0]
    status = rnd.choices(("active", "suspended", "revoked"), (92, 5, 3))[0]
    window = rnd.choices(("open", "valid", "expired", "future"),
                         (60, 32, 5, 3))[0]
    valid_from = valid_until = None
    if window == "valid":
        valid_from = VALID_SINCE_MS
        valid_until = NOT_BEFORE_MS
    elif window == "expired":
        valid_until = EXPIRED_AT_MS
    elif window == "future":
        valid_from = NOT_BEFORE_MS
    extra = ()
    if rnd.random() < 0.2:
        extra = tuple(sorted({"area%d" % rnd.randrange(areas)
                              for _ in range(rnd.randint(1, 2))}))
    attributes = {
        "data_residency": "eu" if rnd.random() < 0.1 else "us",
        "sharing": "on" if rnd.random() < 0.5 else "off",
        "region": rnd.choice(REGIONS),
    }
    return Account(account_id(n), plan, status, valid_from, valid_until,
                   extra, attributes)


def make_requests(n_requests: int, n_accounts: int, rules: list,
                  seed: int) -> list:
    """A mix of allows and denies over accounts and rules, seeded."""
    rnd = random.Random(seed)
    areas = n_areas(rules)
    out = []
    for i in range(n_requests):
        if rnd.random() < 0.04:
            account = "ghost-%d" % i
        else:
            account = account_id(rnd.randrange(n_accounts))
        rule = rnd.choice(rules)
        action = rule.action
        if rnd.random() < 0.05:
            action = "area%d.purge" % rule.area
        resource_type = rule.resource_type
        if rnd.random() < 0.05:
            resource_type = "kind%d" % rnd.randrange(areas)
        prefix = "doc-" if rnd.random() < 0.7 else "img-"
        roles = ("user",) + tuple(r for r in ROLES if rnd.random() < 0.6)
        subject = {
            "level": str(rnd.randint(1, 5)),
            "mfa": "true" if rnd.random() < 0.8 else "false",
            "locked": "true" if rnd.random() < 0.02 else "false",
        }
        country = (rnd.choice(EMBARGOED) if rnd.random() < 0.02
                   else rnd.choice(COUNTRIES))
        context = {
            "env": rnd.choices(("prod", "staging", "dev"), (70, 20, 10))[0],
            "country": country,
            "region": rnd.choice(REGIONS),
        }
        out.append(Request(account, "user-%d" % rnd.randrange(1000), roles,
                           subject, action, resource_type,
                           "%s%d" % (prefix, rnd.randrange(100000)),
                           context))
    return out


def policy_yaml(rules: list) -> str:
    """The rule set in jitauth's policy language."""
    areas = n_areas(rules)
    lines = ["# Generated by bench/workload.py: %d allow rules over %d "
             "areas." % (len(rules), areas), "plans:"]
    for rank, plan in enumerate(PLANS):
        entitlements = ", ".join("area%d" % a for a in range(areas)
                                 if a % 4 <= rank)
        lines.append("  %s:" % plan)
        lines.append("    entitlements: [%s]" % entitlements)
    lines += [
        "rules:",
        "  - id: embargo",
        "    effect: deny",
        "    action: \"*\"",
        "    when:",
        "      - {attr: context.country, in: [%s]}" % ", ".join(EMBARGOED),
        "  - id: eu-residency",
        "    effect: deny",
        "    action: \"*\"",
        "    when:",
        "      - {attr: license.data_residency, eq: eu}",
        "      - {attr: context.region, not_in: [%s]}"
        % ", ".join(EU_REGIONS),
        "  - id: locked-subject",
        "    effect: deny",
        "    action: \"*\"",
        "    when:",
        "      - {attr: subject.locked, eq: \"true\"}",
    ]
    for rule in rules:
        lines.append("  - id: %s" % rule.id)
        lines.append("    effect: allow")
        lines.append("    action: %s" % rule.action)
        if rule.id_prefix:
            lines.append("    resource: {type: %s, id: \"%s*\"}"
                         % (rule.resource_type, rule.id_prefix))
        else:
            lines.append("    resource: {type: %s}" % rule.resource_type)
        if rule.roles:
            lines.append("    roles: [%s]" % ", ".join(rule.roles))
        lines.append("    entitlement: %s" % rule.entitlement)
        conditions = _conditions_yaml(rule.op)
        if conditions:
            lines.append("    when:")
            lines += ["      - %s" % c for c in conditions]
    return "\n".join(lines) + "\n"


def _conditions_yaml(op: str) -> list:
    if op == "edit":
        return ["{attr: context.env, in: [%s]}" % ", ".join(ENVS)]
    if op == "export":
        return ["{attr: subject.level, gte: %d}" % MIN_EXPORT_LEVEL,
                "{attr: context.env, eq: prod}"]
    if op == "share":
        return ["{attr: license.sharing, eq: \"on\"}"]
    if op == "admin":
        return ["{attr: subject.mfa, eq: \"true\"}"]
    return []


@dataclass
class Workload:
    """A generated workload on disk and in memory.

    ``accounts`` holds the facts of the accounts the requests name (all of
    them up to ``keep_accounts``); the LMDB environment under ``data_dir``
    holds every account.
    """

    n_accounts: int
    n_rules: int
    rules: list
    requests: list
    facts: dict
    data_dir: str
    policy_path: str
    revision: int

    def license_facts(self, account: str) -> dict:
        return self.facts.get(account, NO_LICENSE)


def build(root: str, n_accounts: int, n_rules: int, n_requests: int,
          seed: int = 1, progress=None) -> Workload:
    """Generate a workload under ``root`` and load it into LMDB.

    Up to 200,000 accounts go through ``jitauth.loader.load`` from a JSON
    Lines file, exactly as an operator would load them.  Above that the
    licenses are written straight into the store in batches with the same
    record encoding (the loader holds every record in memory and writes one
    transaction, which at ten million accounts needs gigabytes), and the
    policy is then loaded with the loader as a new revision.
    """
    from jitauth.loader import load

    os.makedirs(root, exist_ok=True)
    rules = make_rules(n_rules)
    areas = n_areas(rules)
    requests = make_requests(n_requests, n_accounts, rules, seed)
    named = {r.account_id for r in requests}
    facts = {}

    policy_path = os.path.join(root, "policy.yaml")
    with open(policy_path, "w", encoding="utf-8") as f:
        f.write(policy_yaml(rules))

    data_dir = os.path.join(root, "data")
    if n_accounts <= 200_000:
        licenses_path = os.path.join(root, "licenses.jsonl")
        with open(licenses_path, "w", encoding="utf-8") as f:
            for n in range(n_accounts):
                account = make_account(n, areas, seed)
                if account.id in named:
                    facts[account.id] = account.facts()
                f.write(json.dumps(account.json()) + "\n")
                if progress and n % 10_000 == 0:
                    progress(n, n_accounts)
        revision = load(data_dir, policy_path, [licenses_path])
    else:
        _write_licenses(data_dir, n_accounts, areas, seed, named, facts,
                        progress)
        revision = load(data_dir, policy_path, [])
    return Workload(n_accounts, len(rules) + len(DENY_RULES), rules,
                    requests, facts, data_dir, policy_path, revision)


def _write_licenses(data_dir, n_accounts, areas, seed, named, facts,
                    progress, batch=50_000) -> None:
    from jitauth.licenses import License, encode_license
    from jitauth.model import LicenseStatus
    from jitauth.store import Store

    store = Store(data_dir, create=True)
    try:
        for start in range(0, n_accounts, batch):
            with store.env.begin(write=True) as txn:
                for n in range(start, min(n_accounts, start + batch)):
                    account = make_account(n, areas, seed)
                    if account.id in named:
                        facts[account.id] = account.facts()
                    record = encode_license(License(
                        account_id=account.id, plan=account.plan,
                        status=LicenseStatus[account.status.upper()],
                        valid_from_ms=account.valid_from_ms,
                        valid_until_ms=account.valid_until_ms,
                        entitlements=account.entitlements,
                        attributes=account.attributes))
                    txn.put(store.licenses, account.id.encode(), record)
            if progress:
                progress(start + batch, n_accounts)
        store.env.sync()
    finally:
        store.close()
