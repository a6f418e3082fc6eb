"""A metric's values over a clip, their summary and its JSON form."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


def _round(v: Optional[float], digits: int = 5) -> Optional[float]:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), digits)


@dataclass
class MetricSeries:
    """``values[i]`` is the metric at position ``x[i]`` (a frame, a transition ``x-1 -> x``, or a boundary frame),
    None where it could not be measured (e.g. no face). ``better`` is "higher" or "lower"."""

    metric: str                                  # short id: identity, pose, expression, mouth, flicker, seam
    description: str                             # what the number is, with its unit
    unit: str
    better: str
    values: list[Optional[float]]
    x: list[int] = field(default_factory=list)
    x_label: str = "frame"
    marks: list[int] = field(default_factory=list)  # x positions drawn as vertical lines (boundaries)
    extra: dict = field(default_factory=dict)     # metric-specific numbers (per-axis means, per-boundary rows...)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.values = [None if v is None or not math.isfinite(float(v)) else float(v) for v in self.values]
        if not self.x:
            self.x = list(range(len(self.values)))
        if len(self.x) != len(self.values):
            raise ValueError(f"{self.metric}: {len(self.values)} values for {len(self.x)} positions")

    @property
    def measured(self) -> np.ndarray:
        return np.array([v for v in self.values if v is not None], np.float64)

    @property
    def mean(self) -> float:
        m = self.measured
        return float(m.mean()) if m.size else float("nan")

    @property
    def missing(self) -> list[int]:
        return [x for x, v in zip(self.x, self.values) if v is None]

    def floats(self) -> list[float]:
        """The values with NaN where nothing was measured (for a FLOAT list)."""
        return [float("nan") if v is None else v for v in self.values]

    def to_dict(self) -> dict:
        m = self.measured
        out = {"metric": self.metric, "description": self.description, "unit": self.unit, "better": self.better,
               "mean": _round(self.mean), "min": _round(float(m.min())) if m.size else None,
               "max": _round(float(m.max())) if m.size else None, "std": _round(float(m.std())) if m.size else None,
               "count": int(m.size), "missing": self.missing, "x_label": self.x_label,
               "x": list(self.x), "values": [_round(v) for v in self.values]}
        if self.marks:
            out["marks"] = list(self.marks)
        out.update(self.extra)
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def summary(self) -> str:
        """One line a person reads: the mean and how many positions were measured."""
        mean = self.mean
        text = f"{self.metric}: mean {mean:.4f} {self.unit} ({self.better} is better)" if math.isfinite(mean) else \
            f"{self.metric}: not measured"
        if self.missing:
            text += f"; {len(self.missing)} of {len(self.values)} {self.x_label}s not measured"
        return text


def time_map(n_frames: int, n_driving: int, fps: float = 0.0, driving_fps: float = 0.0) -> list[int]:
    """For each of ``n_frames`` frames, the driving frame shown at the same time (nearest earlier-or-equal frame by
    timestamp when both rates are given, else the same index); positions past the driving clip map to -1."""
    out = []
    for i in range(n_frames):
        j = int(math.floor(i * driving_fps / fps + 1e-6)) if fps > 0 and driving_fps > 0 else i
        out.append(j if j < n_driving else -1)
    return out


def parse_boundaries(text: str, n_frames: int, segment_length: int = 0) -> list[int]:
    """Boundary frames (the first frame of each new segment) from a list like ``"16, 32 48"`` and/or every
    ``segment_length`` frames; only 1 .. n_frames-1 are kept, sorted, without repeats."""
    found: set[int] = set()
    for part in (text or "").replace(";", ",").replace(" ", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            found.add(int(float(part)))
        except ValueError:
            raise ValueError(f"boundaries: {part!r} is not a frame number (write them like '16, 32, 48')") from None
    if segment_length > 0:
        found.update(range(segment_length, n_frames, segment_length))
    return sorted(b for b in found if 0 < b < n_frames)


def join_notes(parts: Sequence[str]) -> str:
    return "; ".join(p for p in parts if p)


__all__ = ["MetricSeries", "parse_boundaries", "time_map"]
