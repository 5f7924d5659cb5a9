"""The bench harness runs end to end in a tiny configuration.

Only jitauth's own engines take part: no peers, no network, no servers.
The run must write a well-formed JSON file, a Markdown table and, when
matplotlib is installed, a PNG plot (else the run says why there is
none), and both matchers must agree (the reference is the yardstick, and
the compiled matcher is timed only when it agrees with it).
"""

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.__main__ import main  # noqa: E402

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_quick_matcher_suite_writes_results(tmp_path, capsys):
    out = tmp_path / "results"

    code = main([
        "--suite", "matcher", "--quick", "--no-install", "--quiet",
        "--engines", "jitauth-compiled", "jitauth-reference",
        "--sizes", "300:20", "--requests", "300", "--rounds", "2",
        "--seconds", "0.5", "--out", str(out),
        "--peers-dir", str(tmp_path / "no-peers"),
    ])

    assert code == 0
    printed = capsys.readouterr().out.split()
    json_path = next(p for p in printed if p.endswith(".json"))
    md_path = next(p for p in printed if p.endswith(".md"))
    png_paths = [p for p in printed if p.endswith(".png")]
    with open(json_path, encoding="utf-8") as f:
        run = json.load(f)
    for key in ("started", "cpu", "cores", "python", "packages", "git"):
        assert key in run["machine"]
    size = run["suites"]["matcher"]["sizes"][0]
    assert size["accounts"] == 300
    assert 0 < size["allow_rate"] < 1
    reference = size["engines"]["jitauth-reference"]
    assert reference["status"] == "timed"
    assert reference["checked"] == 300
    assert reference["timing"]["p50"]["median"] > 0
    assert len(reference["timing"]["rounds"]) == 2
    compiled = size["engines"]["jitauth-compiled"]
    assert compiled["status"] in ("timed", "skipped")
    assert compiled["status"] == "timed" or compiled["reason"]
    assert set(size["engines"]) == {"jitauth-compiled", "jitauth-reference"}

    with open(md_path, encoding="utf-8") as f:
        table = f.read()
    assert "| jitauth-reference |" in table
    if HAVE_MATPLOTLIB:
        assert png_paths
    else:
        assert "matplotlib" in run["plots_skipped"]
    for path in png_paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.dirname(json_path) == str(out)
