"""The matcher suite: per-decision cost of every engine, in process.

For each size the workload is generated and loaded into LMDB, every engine
is built, and each engine's decisions are checked against jitauth's
reference matcher on the same requests (within a time budget; the number
checked is reported).  An engine that disagrees on any request is reported
with examples and not timed.  The others are warmed up and then timed in
interleaved rounds (round 1 of every engine, then round 2, ...), so that
machine noise hits all of them alike; the figure is the median of the
round medians, with the spread across rounds.
"""

import os
import time

from bench import engines, timing, workload

REFERENCE = "jitauth-reference"
COMPILED = "jitauth-compiled"


def _engine_names(config) -> list:
    names = list(engines.OWN) + list(engines.PEERS)
    if config.engines:
        names = [n for n in names if n in config.engines]
    return names


def _check(engine, items, truth, seconds: float) -> tuple:
    """How many leading items agree with ``truth``; the first mismatches."""
    deadline = time.monotonic() + seconds
    mismatches = []
    checked = 0
    for index, item in enumerate(items):
        if engine.decide(item) != truth[index]:
            mismatches.append(index)
        checked += 1
        if len(mismatches) >= 5 or time.monotonic() > deadline:
            break
    return checked, mismatches


def run_size(config, progress, n_accounts: int, n_rules: int) -> dict:
    root = os.path.join(config.work_dir, "matcher-%d-%d"
                        % (n_accounts, n_rules))
    progress.step("matcher: generating %d accounts, %d rules"
                  % (n_accounts, n_rules))
    wl = workload.build(root, n_accounts, n_rules, config.requests,
                        seed=config.seed, progress=progress.update)
    result = {"accounts": n_accounts, "rules": wl.n_rules,
              "requests": len(wl.requests), "engines": {}}

    progress.step("matcher: deciding with the reference matcher")
    reference = engines.build(REFERENCE, wl)
    ref_items = reference.inputs(wl.requests)
    truth = []
    deadline = time.monotonic() + config.check_seconds * 4
    for item in ref_items:
        truth.append(reference.decide(item))
        if time.monotonic() > deadline:
            break
    result["reference_decided"] = len(truth)
    result["allow_rate"] = sum(truth) / len(truth)

    built = {}
    for name in _engine_names(config):
        entry = result["engines"].setdefault(name, {})
        progress.step("matcher: building and checking %s" % name)
        try:
            engine = reference if name == REFERENCE else engines.build(
                name, wl)
        except engines.Unavailable as exc:
            entry.update(status="skipped", reason=str(exc))
            progress.note("%s skipped: %s" % (name, exc))
            continue
        except Exception as exc:
            entry.update(status="skipped",
                         reason="failed to build: %r" % exc)
            progress.note("%s skipped: %r" % (name, exc))
            continue
        entry.update(version=engine.version, notes=engine.notes)
        items = (ref_items if engine is reference
                 else engine.inputs(wl.requests))[:len(truth)]
        checked, mismatches = _check(engine, items, truth,
                                     config.check_seconds)
        entry["checked"] = checked
        if mismatches:
            entry.update(status="disagrees", reason="%d of %d decisions "
                         "differ from the reference" % (len(mismatches),
                                                        checked),
                         examples=[_example(wl, reference, ref_items, i,
                                            truth) for i in mismatches])
            progress.note("%s disagrees: not timed" % name)
            continue
        built[name] = (engine, items[:checked])

    overhead = timing.clock_overhead_ns()
    result["clock_overhead_ns"] = overhead
    budget = config.engine_seconds / config.rounds
    for name, (engine, items) in built.items():
        progress.step("matcher: warming up %s" % name)
        timing.warm_up(engine.decide, items[:2000], budget)

    rounds = {name: [] for name in built}
    for index in range(config.rounds):
        for name, (engine, items) in built.items():
            progress.step("matcher: round %d/%d %s"
                          % (index + 1, config.rounds, name))
            values = timing.time_calls(engine.decide, items,
                                       max_seconds=budget,
                                       overhead_ns=overhead)
            rounds[name].append(timing.summarise(values))

    for name, per_round in rounds.items():
        entry = result["engines"][name]
        entry["status"] = "timed"
        entry["timing"] = timing.combine(per_round)
    for engine, _ in built.values():
        if engine is not reference:
            engine.close()
    reference.close()
    result["ratios"] = _ratios(result)
    return result


def _example(wl, reference, ref_items, index, truth) -> dict:
    request = wl.requests[index]
    reason, rule = reference.explain(ref_items[index])
    return {"request": {"account": request.account_id,
                        "action": request.action,
                        "resource": [request.resource_type,
                                     request.resource_id],
                        "roles": list(request.roles),
                        "subject": request.subject_attributes,
                        "context": request.context},
            "license": wl.license_facts(request.account_id),
            "reference": "allow" if truth[index] else "deny",
            "reference_reason": reason, "reference_rule": rule}


def _p50(result, name):
    entry = result["engines"].get(name, {})
    if entry.get("status") != "timed":
        return None
    return entry["timing"]["p50"]["median"]


def _ratios(result) -> dict:
    """Fastest peer's median over each jitauth matcher's median."""
    peers = [(n, _p50(result, n)) for n in engines.PEERS]
    peers = [(n, v) for n, v in peers if v]
    out = {}
    if not peers:
        return out
    fastest, value = min(peers, key=lambda p: p[1])
    out["fastest_peer"] = fastest
    for own in engines.OWN:
        mine = _p50(result, own)
        if mine:
            out["%s_vs_fastest_peer" % own] = value / mine
    return out


def run(config, progress, tools) -> dict:
    sizes = [run_size(config, progress, accounts, rules)
             for accounts, rules in config.matcher_sizes]
    return {"sizes": sizes, "target": "median per decision at least 10x "
            "faster than the fastest peer"}


def _fmt_ns(value) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return "%.2f ms" % (value / 1e6)
    if value >= 1e3:
        return "%.2f µs" % (value / 1e3)
    return "%.0f ns" % value


def markdown(result) -> str:
    lines = []
    for size in result["sizes"]:
        lines.append("\n### %d accounts, %d rules (%d requests, %.0f%% "
                     "allowed)\n" % (size["accounts"], size["rules"],
                                     size["requests"],
                                     100 * size["allow_rate"]))
        lines.append("| engine | version | status | checked | p50 | "
                     "spread of p50 | p99 | vs fastest peer |")
        lines.append("|---|---|---|---|---|---|---|---|")
        fastest = size["ratios"].get("fastest_peer")
        base = _p50(size, fastest) if fastest else None
        for name, entry in size["engines"].items():
            status = entry.get("status", "?")
            if status != "timed":
                lines.append("| %s | %s | %s: %s | %s | - | - | - | - |" % (
                    name, entry.get("version", "-"), status,
                    entry.get("reason", ""), entry.get("checked", "-")))
                continue
            t = entry["timing"]
            ratio = ("%.1fx" % (base / t["p50"]["median"]) if base
                     else "-")
            lines.append("| %s | %s | timed | %d | %s | %.0f%% | %s | %s |"
                         % (name, entry["version"], entry["checked"],
                            _fmt_ns(t["p50"]["median"]),
                            100 * t["p50"]["rel_spread"],
                            _fmt_ns(t["p99"]["median"]), ratio))
    return "\n".join(lines) + "\n"


def plot(result, out_dir: str, stem: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    names = []
    for size in sizes:
        for name, entry in size["engines"].items():
            if entry.get("status") == "timed" and name not in names:
                names.append(name)
    if not names:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(sizes), 1)
    for i, size in enumerate(sizes):
        values = [(_p50(size, n) or 0) / 1000 for n in names]
        errors = [[0] * len(names), [0] * len(names)]
        for j, n in enumerate(names):
            entry = size["engines"].get(n, {})
            if entry.get("status") == "timed":
                p = entry["timing"]["p50"]
                errors[0][j] = (p["median"] - p["min"]) / 1000
                errors[1][j] = (p["max"] - p["median"]) / 1000
        ax.bar([k + i * width for k in range(len(names))], values, width,
               yerr=errors, label="%d accounts, %d rules"
               % (size["accounts"], size["rules"]))
    ax.set_xticks([k + width * (len(sizes) - 1) / 2
                   for k in range(len(names))])
    ax.set_xticklabels(names, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("median µs per decision (log)")
    ax.set_title("Per-decision cost by engine")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(out_dir, "%s-matcher.png" % stem)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
