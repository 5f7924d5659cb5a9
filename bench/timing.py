"""Timed loops with warm-up, rounds, medians and spread, bounded in time.

Every loop here stops at whichever comes first: its item count or its time
budget.  Per-call times are taken with ``perf_counter_ns`` around each
call, minus the median cost of reading the clock twice, so that medians
and tails are of single decisions rather than of averages.
"""

import statistics
import time

_clock = time.perf_counter_ns


def clock_overhead_ns(samples: int = 20_000) -> int:
    """Median cost of two consecutive clock reads."""
    out = []
    for _ in range(samples):
        t0 = _clock()
        t1 = _clock()
        out.append(t1 - t0)
    return int(statistics.median(out))


def percentile(sorted_values, q: float) -> float:
    """The ``q`` (0..1) quantile of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1,
                max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[index])


def summarise(values) -> dict:
    """p50, p90, p99, max and mean of a list of numbers."""
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": float(ordered[-1]) if ordered else float("nan"),
        "mean": statistics.fmean(ordered) if ordered else float("nan"),
    }


def spread(values) -> dict:
    """Median, min, max and relative spread ((max - min) / median)."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi,
            "rel_spread": (hi - lo) / med if med else float("nan")}


def time_calls(decide, items, *, max_seconds: float,
               overhead_ns: int) -> list:
    """Per-call ns of ``decide(item)`` over ``items`` within the budget."""
    out = []
    append = out.append
    clock = _clock
    deadline = clock() + int(max_seconds * 1e9)
    for i, item in enumerate(items):
        t0 = clock()
        decide(item)
        t1 = clock()
        append(t1 - t0 - overhead_ns)
        if i & 63 == 0 and t1 > deadline:
            break
    return out


def warm_up(decide, items, max_seconds: float) -> None:
    deadline = time.monotonic() + max_seconds
    for item in items:
        decide(item)
        if time.monotonic() > deadline:
            break


def combine(per_round: list) -> dict:
    """One engine's rounds: medians across rounds and their spread."""
    medians = [r["p50"] for r in per_round]
    return {
        "unit": "ns",
        "rounds": per_round,
        "p50": spread(medians),
        "p99": spread([r["p99"] for r in per_round]),
        "mean": spread([r["mean"] for r in per_round]),
        "decisions": sum(r["n"] for r in per_round),
    }
