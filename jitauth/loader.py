"""``jitauth load``: validate policy and license files, then store them.

Everything is validated before the write transaction starts, and the write
is one transaction: a bad file leaves the store exactly as it was, and
readers switch from the old revision to the new one in a single step.
"""

import json
import logging
import time

from jitauth.licenses import encode_license, read_licenses
from jitauth.policy import SourceError, compile_policy
from jitauth.store import REVISION_KEY, Store, revision_key

log = logging.getLogger(__name__)


def load(data_dir: str, policy_path: str, license_paths=()) -> int:
    """Install a policy (and, if given, the full set of licenses).

    With license files, they replace every stored license; without, the
    stored licenses stay.  Returns the new revision number.  Raises
    ``jitauth.policy.SourceError`` on invalid input, before writing.
    """
    with open(policy_path, "rb") as f:
        source = f.read().decode("utf-8", "replace")
    policy = compile_policy(policy_path)

    licenses = []
    plans = set(policy["plans"])
    seen = {}
    for path in license_paths:
        for line, lic in read_licenses(path, plans):
            if lic.account_id in seen:
                raise SourceError(path, line, "account",
                                  "account %r is already licensed at %s:%d"
                                  % ((lic.account_id,) + seen[lic.account_id]))
            seen[lic.account_id] = (path, line)
            licenses.append((lic.account_id, encode_license(lic)))

    store = Store(data_dir, create=True)
    try:
        with store.env.begin(write=True) as txn:
            revision = store.current_revision(txn) + 1
            txn.put(store.revisions, revision_key(revision),
                    json.dumps(policy, sort_keys=True).encode())
            txn.put(store.sources, revision_key(revision), json.dumps({
                "policy_file": policy_path,
                "policy_source": source,
                "license_files": list(license_paths),
                "loaded_at_ms": int(time.time() * 1000),
            }).encode())
            if license_paths:
                txn.clear(store.licenses)
                for account, record in licenses:
                    txn.put(store.licenses, account.encode(), record)
            txn.put(store.meta, REVISION_KEY, revision_key(revision))
        store.env.sync()
    finally:
        store.close()

    log.info("loaded revision %d: %d rules, %d licenses", revision,
             len(policy["rules"]), len(licenses))
    return revision

