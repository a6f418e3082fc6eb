"""HunyuanPortrait's motion-intensity ids from the detector's 5-point landmarks (official
``get_head_exp_motion_bucketid``), computed per chunk of ``chunk`` driving frames (25 officially; chunks are
consecutive slices of the unpadded driving sequence, the last may be shorter).

For one chunk of landmarks (T, 5, 2) in full-frame pixels (left eye, right eye, nose, left mouth, right mouth):

* relative landmarks = landmarks - the frame's nose; ``scale`` = diagonal of the bounding box of the chunk's
  **first** frame's relative landmarks;
* expression value = mean over frames and points of |rel - temporal mean of rel| / scale * 1024;
* head value = mean over frames of |nose - mean nose| / scale * 256;
* id = int(value) (truncation), clamped to [0, 127].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntensitySettings:
    chunk: int = 25
    nose_index: int = 2
    max_value: int = 127
    exp_scale: float = 1024.0
    head_scale: float = 256.0


def intensity_values(landmarks: np.ndarray, settings: IntensitySettings = IntensitySettings()) -> tuple[float, float]:
    """(T, 5, 2) landmarks of one chunk -> (head value, expression value), float64, before truncation.

    A chunk whose first frame has all points at one place (scale 0) gives 0, 0 (the original divides by zero).
    """
    lmk = np.asarray(landmarks, dtype=np.float64)
    nose = lmk[:, settings.nose_index]                               # (T, 2)
    rel = lmk - nose[:, None]                                        # (T, 5, 2)
    first = rel[0]
    scale = np.sqrt(((first.max(0) - first.min(0)) ** 2).sum())
    if not scale > 0:
        return 0.0, 0.0
    exp_dist = np.sqrt(((rel - rel.mean(0)) ** 2).sum(2))            # (T, 5)
    exp_value = exp_dist.mean() / scale * settings.exp_scale
    head_dist = np.sqrt(((nose - nose.mean(0)) ** 2).sum(1))         # (T,)
    head_value = head_dist.mean() / scale * settings.head_scale
    return float(head_value), float(exp_value)


def to_id(value: float, max_value: int = 127) -> int:
    """int() truncation, clamped to [0, max_value]."""
    return min(max(int(value), 0), max_value)


def chunk_intensity_ids(landmarks: np.ndarray, settings: IntensitySettings = IntensitySettings()
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5, 2) landmarks of the driving sequence -> ids (K, 2) int64 [head, exp] per chunk and the raw values
    (K, 2) float64, K = ceil(N / chunk)."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    raw = [intensity_values(lmk[s:s + settings.chunk], settings) for s in range(0, len(lmk), settings.chunk)]
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
    ids = np.asarray([[to_id(h, settings.max_value), to_id(e, settings.max_value)] for h, e in raw],
                     dtype=np.int64).reshape(-1, 2)
    return ids, raw


__all__ = ["IntensitySettings", "chunk_intensity_ids", "intensity_values", "to_id"]
