"""Side-by-side timing of two implementations of the same computation: outputs checked equal within a tolerance
first, then timed interleaved (A, B, A, B, ...) in one process, minimum of N repeats.

Used by ``_originals.py`` (the pack's denoiser step against the original implementation's on the same config, the
same weights and the same inputs) and testable with any pair of callables."""
from __future__ import annotations

import time
from typing import Callable

Outputs = dict  # name -> tensor


def max_deviation(actual: Outputs, expected: Outputs, tolerance: dict) -> dict:
    """Per output: max |a - e|, and whether ``|a - e| <= atol + rtol * |e|`` holds everywhere. ``tolerance`` maps an
    output name to ``{"atol", "rtol"}`` (a missing name uses the entry ``"*"``)."""
    import torch

    rows = {}
    for name, e in expected.items():
        if name not in actual:
            raise KeyError(f"output {name!r} missing from the pack's outputs (has {sorted(actual)})")
        a = actual[name].detach().float().cpu()
        e = e.detach().float().cpu()
        if a.shape != e.shape:
            raise ValueError(f"output {name!r}: shape {tuple(a.shape)} against {tuple(e.shape)}")
        tol = tolerance.get(name, tolerance.get("*"))
        diff = (a - e).abs()
        ok = bool(torch.isfinite(a).all()) and bool((diff <= tol["atol"] + tol["rtol"] * e.abs()).all())
        rows[name] = {"max_abs": float(diff.max()) if diff.numel() else 0.0, "atol": tol["atol"], "rtol": tol["rtol"],
                      "ok": ok}
    return rows


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Run each callable ``warmup`` times, then ``repeats`` rounds of one call each in turn; seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def side_by_side(pack: Callable[[], Outputs], original: Callable[[], Outputs], tolerance: dict, repeats: int = 5,
                 warmup: int = 1, sync: Callable[[], None] = lambda: None) -> dict:
    """Check the two callables' outputs agree within ``tolerance`` (else raise: a timing of different computations
    means nothing), then time them interleaved; the row carries the raw times, the minima and the ratio
    original / pack (> 1: the pack is faster)."""
    import torch

    with torch.no_grad():
        dev = max_deviation(pack(), original(), tolerance)
        bad = {k: v for k, v in dev.items() if not v["ok"]}
        if bad:
            raise AssertionError(f"pack and original disagree beyond the tolerance: {bad}")
        times = interleaved({"pack": pack, "original": original}, repeats, warmup, sync)
    pack_s, orig_s = min(times["pack"]), min(times["original"])
    return {"pack_s": pack_s, "original_s": orig_s, "ratio": orig_s / pack_s, "repeats": repeats,
            "pack_times": times["pack"], "original_times": times["original"],
            "max_abs_diff": max(v["max_abs"] for v in dev.values()), "outputs_checked": sorted(dev),
            "within_tolerance": True}
