"""benchmarks/hunyuan_portrait.py: the smallest settings for two lengths, each in its own process, through the CLI.

Checks that the reported counts follow the sampler's window rule, that the UNet ran once per window and step, that the
per-frame state has the size of the padded sequence, and that the JSON file holds the rows (no timing thresholds)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from portrait_animation.hunyuan_portrait.sampler import window_starts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "hunyuan_portrait.py"
FRAMES = (8, 40)
SMALLEST = dict(image=32, steps=1, window=4, overlap=1, shift=3, pad=2, decode_chunk=4, crop=32)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_hunyuan_portrait", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_window_count_is_the_samplers():
    bench = _load_benchmark()
    for frames in (1, 5, 25, 31, 44, 155, 780):
        for window, overlap in ((25, 3), (8, 2), (4, 1), (5, 0)):
            for shift in (0, 3):
                assert bench.windows_per_step(frames, window, overlap) == len(
                    window_starts(frames, window, overlap, shift))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "hunyuan.json"
    options = [x for k, v in SMALLEST.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [sys.executable, str(SCRIPT), "--size", "small", "--device", "cpu", "--threads", "1", "--frames",
           *map(str, FRAMES), *options, "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert out.is_file()
    return json.loads(out.read_text()), done.stdout


def test_rows_follow_the_window_rule(report):
    data, _ = report
    s = data["settings"]
    assert {k: s[k] for k in SMALLEST} == SMALLEST and s["device"] == "cpu" and s["dtype"] == "fp32"
    rows = data["rows"]
    assert [r["frames"] for r in rows] == list(FRAMES)
    for r in rows:
        padded = r["frames"] + 2 * s["pad"]
        windows = math.ceil(padded / (s["window"] - s["overlap"]))
        assert r["padded_frames"] == padded
        assert r["windows_per_step"] == windows
        assert r["unet_calls"] == s["steps"] * windows  # counted by a forward hook on the UNet
        assert r["video_shape"] == [1, 3, r["frames"], s["image"], s["image"]]
    assert rows[1]["unet_calls"] > rows[0]["unet_calls"]


def test_state_is_the_padded_sequence(report):
    data, _ = report
    s = data["settings"]
    side, latent = s["image"], s["image"] // 8
    for r in data["rows"]:
        f, n = r["padded_frames"], r["frames"]
        expected = 4 * (f * 64 * 1024 + f * 4 * latent * latent + n * 3 * side * side)  # float32 motion, latents, video
        assert r["state_mb"] * 2**20 == pytest.approx(expected)
        assert r["motion_device"] == "cpu"


def test_times_and_memory_are_measured(report):
    data, _ = report
    for r in data["rows"]:
        for key in ("build_s", "motion_s", "denoise_s", "decode_s", "s_per_frame"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["s_per_frame"] == pytest.approx((r["denoise_s"] + r["decode_s"]) / r["frames"])
        assert math.isfinite(r["host_increase_mb"]) and r["host_increase_mb"] >= 0
        assert r["peak_host_mb"] >= r["host_base_mb"] + r["host_increase_mb"] and r["host_base_mb"] > 0
        assert r["host_increase_mb"] == max(r[f"host_{p}_mb"] for p in ("motion", "denoise", "decode"))
        assert r["gpu_denoise_mb"] is None and r["peak_gpu_mb"] is None  # CPU run: no accelerator figures


def test_output_names_the_run(report):
    data, stdout = report
    assert "hunyuan_portrait.py" in data["command"] and "--frames 8 40" in data["command"]
    assert data["machine"]["cpu"] and data["machine"]["device"] == "cpu"
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| frames | padded | windows/step | UNet calls |")
    assert len(table) == 2 + len(FRAMES)  # header, alignment row, one row per length
    assert data["command"] in stdout
