"""Code that runs in a fresh child process, away from the harness's heap.

A decision worker opens the LMDB environment itself, as a server worker
does, so its memory figures are its own: RSS and PSS are read from its
``/proc/self/smaps_rollup`` after it has decided the whole mix.
"""

import gc
import os
import time

from bench import machine, timing


def _matcher(data_dir: str, name: str):
    from jitauth.store import Store

    store = Store(data_dir, readonly=True)
    with store.env.begin() as txn:
        revision = store.current_revision(txn)
        policy = store.read_policy(txn, revision)
    if name == "compiled":
        from jitauth._core import Matcher
    else:
        from jitauth.reference import ReferenceMatcher as Matcher
    return store, Matcher(policy, revision)


def _items(store, requests) -> list:
    now_ms = time.time_ns() // 1_000_000
    return [(store.env, store.meta, store.licenses, r.account_id,
             r.subject_id, r.roles, r.subject_attributes, r.action,
             r.resource_type, r.resource_id, r.resource_attributes,
             r.context, now_ms) for r in requests]


def batch_throughput(args) -> dict:
    """Decide batches of ``batch_size`` for ``seconds``; count decisions.

    ``mode`` is ``matcher`` (the compiled matcher, license from LMDB) or
    ``facade`` (``Authorizer.authorize``: validation, matching and, on
    allow, a grant written to LMDB).
    """
    data_dir, requests, mode, batch_size, seconds, max_decisions = args
    if mode == "facade":
        from jitauth.authorizer import Authorizer
        from jitauth.model import AuthorizeInput

        authorizer = Authorizer(data_dir)
        items = [AuthorizeInput(
            account_id=r.account_id, subject_id=r.subject_id,
            action=r.action, resource_type=r.resource_type,
            resource_id=r.resource_id, roles=r.roles,
            subject_attributes=r.subject_attributes,
            resource_attributes=r.resource_attributes, context=r.context)
            for r in requests]

        def decide_batch(batch):
            return [authorizer.authorize(q) for q in batch]
    else:
        store, matcher = _matcher(data_dir, "compiled")
        items = _items(store, requests)
        match = matcher.match_stored

        def decide_batch(batch):
            return [match(*item) for item in batch]

    batches = [items[i:i + batch_size]
               for i in range(0, len(items) - batch_size + 1, batch_size)]
    if not batches:
        batches = [items]
    decide_batch(batches[0])
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while done < max_decisions:
        for batch in batches:
            decide_batch(batch)
            done += len(batch)
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    return {"decisions": done, "elapsed": elapsed,
            "cpu": time.process_time() - cpu0}


def scale_probe(args) -> dict:
    """Per-decision latency and this process's memory at one size."""
    data_dir, requests, rounds, seconds = args
    store, matcher = _matcher(data_dir, "compiled")
    items = _items(store, requests)
    match = matcher.match_stored

    def decide(item):
        return match(*item)

    memory_before = machine.memory_kib(os.getpid())
    overhead = timing.clock_overhead_ns()
    timing.warm_up(decide, items, seconds / (rounds + 1))
    gc.collect()
    per_round = [timing.summarise(timing.time_calls(
        decide, items, max_seconds=seconds / (rounds + 1),
        overhead_ns=overhead)) for _ in range(rounds)]
    return {"timing": timing.combine(per_round),
            "memory_open_kib": memory_before,
            "memory_kib": machine.memory_kib(os.getpid())}


def run_in_children(function, jobs: list) -> list:
    """``function(job)`` for each job, each in its own spawned process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(len(jobs)) as pool:
        return pool.map(function, jobs, chunksize=1)
