"""Temporal metrics: flicker (motion-compensated frame-to-frame change) and seams at window/clip boundaries.

**flicker**: for each pair of consecutive frames, OpenCV's Farneback optical flow from frame ``t`` to ``t-1``
warps frame ``t-1`` onto frame ``t``; the warp error is the mean absolute difference (8-bit levels, RGB) over the
pixels whose flow is consistent forwards and backwards (occlusions and the image border left out). Motion the flow
explains costs nothing; flicker, popping texture and jitter do. Frames are resized to ``size`` on the long side
first (the flow works on grey levels there).

**seam**: at each boundary frame ``b`` (the first frame of a new window or clip) the warp error of the transition
``b-1 -> b`` divided by the median warp error of the other transitions of the two segments around it: 1 means the
boundary changes no more than the frames inside the segments; a visible jump gives several times that.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Optional

import cv2
import numpy as np

from .constants import FLOW_SIZE
from .series import MetricSeries

_CACHE: "OrderedDict[tuple, list]" = OrderedDict()
_LOCK = threading.Lock()
CONSISTENCY = 0.5       # px (at the flow size): forward-backward flow mismatch allowed, plus 5% of the motion


def _small(images, i: int, size: int) -> np.ndarray:
    from ..face.frames import frame_uint8

    rgb = frame_uint8(images, i)
    h, w = rgb.shape[:2]
    s = min(1.0, size / max(h, w))
    if s < 1.0:
        rgb = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    return rgb.astype(np.float32)


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow from grey image ``a`` to ``b`` (a pixel of ``a`` at p is found at p + flow in ``b``)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3, poly_n=5,
                                        poly_sigma=1.2, flags=0)


def warp_error(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean absolute difference (8-bit levels) between ``cur`` and ``prev`` warped onto it by optical flow, over the
    pixels with consistent forward/backward flow (all pixels when none is consistent)."""
    g0 = cv2.cvtColor(prev.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    g1 = cv2.cvtColor(cur.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    back = _flow(g1, g0)                                     # cur pixel p is at p + back in prev
    fwd = _flow(g0, g1)
    h, w = g1.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + back[..., 0], gy + back[..., 1]
    warped = cv2.remap(prev, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    fwd_at = cv2.remap(fwd, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mismatch = np.hypot(*(back + fwd_at).transpose(2, 0, 1))
    motion = np.hypot(*back.transpose(2, 0, 1))
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    valid = inside & (mismatch <= CONSISTENCY + 0.05 * motion)
    diff = np.abs(warped - cur).mean(-1)
    return float(diff[valid].mean()) if valid.any() else float(diff.mean())


def transition_errors(images, size: int = FLOW_SIZE,
                      progress: Optional[Callable[[int], None]] = None) -> list[float]:
    """Warp error of every transition ``t-1 -> t`` (t = 1 .. N-1). The last few clips' results are kept (keyed by
    content and size), so flicker and seam on the same frames compute the flow once."""
    from .faces import fingerprint

    key = (fingerprint(images), int(size))
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        if progress is not None:
            progress(max(0, len(images) - 1))
        return list(cached)
    out = _transition_errors(images, size, progress)
    with _LOCK:
        _CACHE[key] = out
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    return list(out)


def _transition_errors(images, size: int, progress) -> list[float]:
    n = len(images)
    out: list[float] = []
    prev = _small(images, 0, size) if n else None
    for t in range(1, n):
        cur = _small(images, t, size)
        out.append(warp_error(prev, cur))
        prev = cur
        if progress is not None:
            progress(1)
    return out


def flicker(images, size: int = FLOW_SIZE, progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """Flow-compensated frame-to-frame error of a clip: one value per transition (at the later frame)."""
    n = len(images)
    values = transition_errors(images, size, progress)
    notes = [] if n > 1 else ["a single frame has no transitions"]
    return MetricSeries("flicker", f"warp error between consecutive frames after Farneback optical flow (mean "
                        f"absolute difference, 8-bit levels, at {size} px)", "levels", "lower", values,
                        x=list(range(1, n)), x_label="frame", extra={"flow_size": size}, notes=notes)


def seam_scores(images, boundaries: list[int], size: int = FLOW_SIZE, errors: Optional[list[float]] = None,
                progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """One value per boundary: the warp error at the boundary over the median of the other transitions of the
    segments on both sides. ``errors``: :func:`transition_errors` of these images, if already computed."""
    n = len(images)
    errs = errors if errors is not None else transition_errors(images, size, progress)
    bounds = sorted({b for b in boundaries if 0 < b < n})
    edges = [0] + bounds + [n]
    rows, values = [], []
    for k, b in enumerate(bounds):
        lo, hi = edges[k], edges[k + 2]                      # the segment before b and the one starting at b
        inner = [errs[t - 1] for t in range(lo + 1, hi) if t not in bounds]
        jump = errs[b - 1]
        base = float(np.median(inner)) if inner else float("nan")
        ratio = jump / max(base, 1e-3) if inner else None
        values.append(ratio)
        rows.append({"frame": b, "jump": round(jump, 4), "within": None if not inner else round(base, 4),
                     "ratio": None if ratio is None else round(ratio, 4)})
    notes = [] if bounds else ["no boundary inside the clip (give boundaries or a segment length)"]
    inside = [errs[t - 1] for t in range(1, n) if t not in bounds]
    return MetricSeries("seam", "warp error at each boundary over the median warp error inside the segments around "
                        "it (1 = no seam)", "x", "lower", values, x=bounds, x_label="boundary frame", marks=bounds,
                        extra={"boundaries": rows, "flow_size": size,
                               "median_within": round(float(np.median(inside)), 4) if inside else None,
                               "transitions": [round(e, 4) for e in errs]}, notes=notes)


def seam_transitions(seam: MetricSeries) -> MetricSeries:
    """The warp error of every transition of a :func:`seam_scores` result, with its boundaries marked (its plot)."""
    errs = seam.extra.get("transitions") or []
    mean = seam.mean
    title = f"seam (ratio {mean:.2f} at {len(seam.x)} boundaries): warp error" if seam.x and mean == mean else \
        "seam: warp error"
    return MetricSeries(title, "warp error per transition", "levels", "lower", errs, x=list(range(1, len(errs) + 1)),
                        marks=list(seam.x))


__all__ = ["flicker", "seam_scores", "seam_transitions", "transition_errors", "warp_error"]
