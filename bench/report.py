"""A run's outputs: one JSON file, one Markdown file and PNG plots."""

import importlib
import json
import math
import os


def _clean(value):
    """JSON has no NaN or infinity; write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write(run: dict, out_dir: str, stem: str) -> dict:
    """Write ``<stem>.json``, ``<stem>.md`` and the plots; return paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"plots": []}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        run["plots_skipped"] = ("matplotlib is not installed (pip install "
                                "matplotlib)")
    for name, result in run["suites"].items():
        if result.get("status") == "failed" or run.get("plots_skipped"):
            continue
        module = importlib.import_module("bench.suites.%s" % name)
        try:
            paths["plots"] += module.plot(result, out_dir, stem)
        except Exception as exc:
            result.setdefault("plot_errors", []).append(repr(exc))

    run["outputs"] = {"plots": [os.path.basename(p)
                                for p in paths["plots"]]}
    paths["json"] = os.path.join(out_dir, "%s.json" % stem)
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(_clean(run), f, indent=2, sort_keys=False)
        f.write("\n")

    paths["markdown"] = os.path.join(out_dir, "%s.md" % stem)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown(run))
    return paths


def markdown(run: dict) -> str:
    machine = run["machine"]
    lines = [
        "# jitauth bench, %s" % machine["started"],
        "",
        "Command: `%s`  " % " ".join(machine["argv"]),
        "Commit: `%s`%s  " % (machine["git"]["commit"][:12],
                              " (with uncommitted changes)"
                              if machine["git"]["dirty"] else ""),
        "Machine: %s, %d cores, %d MiB, Python %s  " % (
            machine["cpu"], machine["cores"], machine["memory_mib"],
            machine["python"]),
        "Tools: %s" % ", ".join("%s %s" % kv
                                for kv in machine["tools"].items()),
        "",
    ]
    for name, result in run["suites"].items():
        lines.append("## %s" % name)
        if result.get("status") == "failed":
            lines.append("\nFailed: %s\n" % result.get("error"))
            continue
        module = importlib.import_module("bench.suites.%s" % name)
        lines.append(module.markdown(result))
    if run.get("skipped"):
        lines.append("## Skipped")
        lines += ["- %s: %s" % (k, v) for k, v in run["skipped"].items()]
        lines.append("")
    if run.get("plots_skipped"):
        lines.append("No plots: %s" % run["plots_skipped"])
    for plot in run.get("outputs", {}).get("plots", []):
        lines.append("![%s](%s)" % (plot, plot))
    return "\n".join(lines) + "\n"
