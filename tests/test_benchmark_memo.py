"""MEMO's benchmarks: ``memo_clips.py``'s real-size preset (what ``run_all.py --device cuda`` runs, checked on the
meta device: no weights, no arithmetic) and the MEMO case of ``accelerations.py`` on the stand-ins."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RELEASED_REFERENCE_NET_PARAMETERS = 857_066_560  # reference_net/diffusion_pytorch_model.safetensors: fp32, 3.43 GB


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _args(memo_clips, argv):
    """memo_clips.py's arguments after its preset filled what ``argv`` leaves open (as its main does)."""
    seen = {}
    real_check = memo_clips.check
    memo_clips.check = lambda args: seen.setdefault("args", args) and {}
    try:
        memo_clips.main([*argv, "--check"])
    finally:
        memo_clips.check = real_check
    return seen["args"]


def test_run_all_on_cuda_runs_memo_at_the_released_settings():
    run_all, memo_clips = _load("run_all"), _load("memo_clips")
    argv = run_all.family_args("memo", "gpu", "cuda", 1)
    assert argv[argv.index("--size") + 1] == "real"
    args = _args(memo_clips, argv)
    # the original's configs/inference.yaml: 512^2, 16 frames and 16 past frames per clip, 20 steps, cfg 3.5, bf16
    assert (args.image, args.clip_length, args.steps, args.cfg, args.dtype) == (512, 16, 20, 3.5, "bf16")
    small = _args(memo_clips, run_all.family_args("memo", "cpu", "cpu", 1))
    assert small.size == "small" and small.image == 128


def test_real_preset_builds_the_released_architecture_on_meta():
    memo_clips = _load("memo_clips")
    args = _args(memo_clips, ["--size", "real"])
    report = memo_clips.check(args)
    assert report["parameters"]["reference_net"] == RELEASED_REFERENCE_NET_PARAMETERS
    # diffusion_net: 6.71 GB of fp32 on the hub (with or without the 42 temporal position tables)
    assert 6.70e9 < 4 * report["parameters"]["diffusion_net"] < 6.72e9
    assert report["step_output"] == report["reuse_output"] == [2, 4, 16, 64, 64]
    assert report["deep_feature"] == [[32, 640, 64, 64], [32, 32, 768]]  # last up block input, audio stream


def test_accelerations_memo_case_reports_cache_interval(tmp_path):
    import json

    accelerations = _load("accelerations")
    out = tmp_path / "memo.json"
    assert accelerations.main(["--family", "memo", "--frames", "4", "--steps", "3", "--repeats", "1",
                               "--threads", "1", "--options", "cache2", "--json", str(out)]) == 0
    rows = {r["option"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["exact"]["psnr_db"] == math.inf
    cache = rows["cache2"]
    assert math.isfinite(cache["psnr_db"]) and cache["worst_frame_psnr_db"] <= cache["psnr_db"]
    assert cache["denoise_s"] > 0 and 0 < cache["max_abs_diff"] < 1
