"""benchmarks/run_all.py and the side-by-side harness (benchmarks/_compare.py).

The comparison is checked on a fake tiny "original" (CI has no source trees of the originals): a linear layer against
the same arithmetic written out, a slowed copy (the ratio must see it) and a wrong one (must be refused before any
timing). The suite command runs one family in --quick mode through the CLI (each family script is exercised by its
own test; BENCH_ALL_FAMILIES=1 runs all three here) and its Markdown and JSON are checked against each other."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---- side by side on a fake original --------------------------------------------------------------------------------
def _pair(slow_s: float = 0.0, wrong: float = 0.0):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)

    def pack():
        return {"y": layer(x)}

    def original():  # the same arithmetic written out, optionally slower or wrong
        if slow_s:
            time.sleep(slow_s)
        return {"y": x @ layer.weight.T + layer.bias + wrong}

    return pack, original


def test_side_by_side_checks_then_times_interleaved():
    compare = _load("_compare")
    pack, original = _pair(slow_s=0.02)
    row = compare.side_by_side(pack, original, {"y": {"atol": 1e-6, "rtol": 1e-6}}, repeats=3, warmup=0)
    assert len(row["pack_times"]) == len(row["original_times"]) == 3
    assert row["pack_s"] == min(row["pack_times"]) and row["original_s"] == min(row["original_times"])
    assert row["original_s"] >= 0.02 and row["ratio"] == pytest.approx(row["original_s"] / row["pack_s"])
    assert row["ratio"] > 1  # the slowed "original" is seen as slower
    assert row["within_tolerance"] and row["max_abs_diff"] < 1e-6 and row["outputs_checked"] == ["y"]


def test_side_by_side_refuses_different_outputs():
    compare = _load("_compare")
    pack, original = _pair(wrong=1e-3)
    calls = []
    with pytest.raises(AssertionError, match="disagree"):
        compare.side_by_side(lambda: calls.append(1) or pack(), original, {"*": {"atol": 1e-5, "rtol": 0}})
    assert len(calls) == 1  # checked once, never timed


def test_max_deviation_names_shape_and_missing_outputs():
    compare = _load("_compare")
    tol = {"*": {"atol": 0.1, "rtol": 0}}
    with pytest.raises(ValueError, match="shape"):
        compare.max_deviation({"y": torch.zeros(2)}, {"y": torch.zeros(3)}, tol)
    with pytest.raises(KeyError, match="missing"):
        compare.max_deviation({}, {"y": torch.zeros(3)}, tol)
    rows = compare.max_deviation({"y": torch.tensor([0.0, 0.05, float("nan")])}, {"y": torch.zeros(3)}, tol)
    assert not rows["y"]["ok"]  # a NaN never passes


def test_comparison_without_tree_is_reported_not_dropped(tmp_path):
    run_all = _load("run_all")
    args = run_all.main.__globals__["argparse"].Namespace(original_root=tmp_path, repeats=2, threads=1, timeout=60)
    rows = [run_all.run_comparison(f, args, "quick") for f in run_all.FAMILIES]
    assert [r["family"] for r in rows] == list(run_all.FAMILIES)
    assert all("no source tree" in r["error"] for r in rows)
    report = {"mode": "quick", "threads": 1, "command": "x", "families": [], "comparisons": rows,
              "machine": {"device": "cpu", "cpu": "c", "cpu_count": 2, "torch": "t", "load_average_start": [0],
                          "load_average_end": [0]}}
    text = run_all.markdown(report)
    assert text.count("| not run: no source tree") == 3


def test_every_family_has_a_comparison():
    assert set(_load("_originals").COMPARISONS) == set(_load("run_all").FAMILIES)


# ---- the suite command ----------------------------------------------------------------------------------------------
FAMILIES = ["hellomeme", "memo", "hunyuan_portrait"] if os.environ.get("BENCH_ALL_FAMILIES") else ["memo"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, str(BENCH / "run_all.py"), "--quick", "--families", *FAMILIES,
           "--json", str(out / "r.json"), "--markdown", str(out / "r.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text(), done.stdout


def test_quick_rows_are_measured(quick):
    report, _, _ = quick
    assert report["mode"] == "quick" and [f["family"] for f in report["families"]] == FAMILIES
    assert report["comparisons"] == []  # no --original-root
    for fam in report["families"]:
        assert "error" not in fam
        assert len(fam["rows"]) == 2  # short and long input
    table = report["table"]
    assert [r["family"] for r in table] == [f for f in FAMILIES for _ in range(2)]
    for r in table:
        for key in ("s_per_frame", "peak_host_mb", "load_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["family"], key)
        assert r["peak_accel_mb"] is None  # CPU
    for short, long in zip(table[::2], table[1::2]):
        assert long["frames"] > short["frames"]
        assert long["host_growth_pct"] == pytest.approx(100 * (long["peak_host_mb"] / short["peak_host_mb"] - 1))


def test_quick_markdown_matches_json(quick):
    report, md, stdout = quick
    assert md.strip() == stdout.strip()
    assert "run_all.py --quick" in report["command"] and report["command"] in md
    rows = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| family")]
    assert len(rows) == len(report["table"])
    for line, r in zip(rows, report["table"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["family"] and cells[1] == r["length"]
        assert float(cells[2]) == pytest.approx(r["s_per_frame"], abs=1e-4)
        assert float(cells[4]) == pytest.approx(r["peak_host_mb"], abs=0.5)
