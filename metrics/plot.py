"""A metric over a clip drawn as an image with numpy and OpenCV (no plotting library)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .series import MetricSeries

BG = (255, 255, 255)
AXIS = (90, 90, 90)
GRID = (228, 228, 228)
LINE = (31, 119, 180)      # RGB
MEAN = (255, 127, 14)
MISSING = (214, 39, 40)
MARK = (148, 103, 189)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _fmt(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 1000:
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.1f}"
    return f"{v:.2e}"


def plot_series(series: MetricSeries, width: int = 768, height: int = 320) -> np.ndarray:
    """``(height, width, 3)`` float32 RGB in [0, 1]: the values against their positions, the mean as a dashed
    line, unmeasured positions as red ticks on the x axis, ``marks`` (boundaries) as vertical lines, and a title with
    the mean."""
    img = np.full((height, width, 3), BG, np.uint8)
    left, right, top, bottom = 70, 16, 34, 38
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    xs = np.array(series.x, np.float64)
    vals = np.array([np.nan if v is None else v for v in series.values], np.float64)
    good = np.isfinite(vals)
    lo_x, hi_x = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    if hi_x <= lo_x:
        hi_x = lo_x + 1.0
    if good.any():
        lo_y, hi_y = float(vals[good].min()), float(vals[good].max())
    else:
        lo_y, hi_y = 0.0, 1.0
    pad = (hi_y - lo_y) * 0.08 or max(abs(hi_y) * 0.05, 1e-3)
    lo_y, hi_y = lo_y - pad, hi_y + pad

    def px(x):
        return int(round(x0 + (x - lo_x) / (hi_x - lo_x) * (x1 - x0)))

    def py(y):
        return int(round(y1 - (y - lo_y) / (hi_y - lo_y) * (y1 - y0)))

    for k in range(5):  # horizontal grid and y labels
        yv = lo_y + (hi_y - lo_y) * k / 4
        cv2.line(img, (x0, py(yv)), (x1, py(yv)), GRID, 1)
        cv2.putText(img, _fmt(yv), (4, py(yv) + 4), FONT, 0.38, AXIS, 1, cv2.LINE_AA)
    n_ticks = min(10, max(1, int(hi_x - lo_x)))
    for k in range(n_ticks + 1):  # x ticks at whole positions
        xv = round(lo_x + (hi_x - lo_x) * k / n_ticks)
        cv2.line(img, (px(xv), y1), (px(xv), y1 + 4), AXIS, 1)
        cv2.putText(img, str(int(xv)), (px(xv) - 8, y1 + 17), FONT, 0.38, AXIS, 1, cv2.LINE_AA)
    cv2.putText(img, series.x_label, (x1 - 8 * len(series.x_label), height - 6), FONT, 0.4, AXIS, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), AXIS, 1)
    for m in series.marks:
        if lo_x <= m <= hi_x:
            cv2.line(img, (px(m), y0), (px(m), y1), MARK, 1, cv2.LINE_AA)

    # the values: line segments between consecutive measured positions, dots for lone points
    pts = [(px(x), py(v)) for x, v, g in zip(xs, vals, good) if g]
    runs, run = [], []
    for x, v, g in zip(xs, vals, good):
        if g:
            run.append((px(x), py(v)))
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    for r in runs:
        if len(r) > 1:
            cv2.polylines(img, [np.array(r, np.int32)], False, LINE, 2, cv2.LINE_AA)
    if len(pts) <= 60:
        for p in pts:
            cv2.circle(img, p, 3, LINE, -1, cv2.LINE_AA)
    for x, g in zip(xs, good):
        if not g:
            cv2.line(img, (px(x), y1 - 8), (px(x), y1), MISSING, 2)

    mean = series.mean
    if math.isfinite(mean):  # dashed mean line
        y = py(mean)
        for s in range(x0, x1, 12):
            cv2.line(img, (s, y), (min(s + 6, x1), y), MEAN, 1, cv2.LINE_AA)
    title = f"{series.metric}: mean {_fmt(mean)} {series.unit} ({series.better} is better)" if math.isfinite(mean) \
        else f"{series.metric}: not measured"
    if series.missing:
        title += f", {len(series.missing)} not measured"
    cv2.putText(img, title, (x0, 22), FONT, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return img.astype(np.float32) / 255.0


__all__ = ["plot_series"]
