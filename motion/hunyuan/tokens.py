"""Per-frame motion tokens of HunyuanPortrait: [refiner output (1018) | rotation in degrees (3) | 0, 0, 0], the
same 6 pose values repeated over the 64 tokens of a frame (the official ``driven_feat``).

:func:`motion_tokens` runs the three motion nets over a driving sequence, one intensity id pair per chunk of
``settings.chunk`` frames (ids from that chunk's landmarks).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .expression import ExpressionEncoder
from .head_pose import HeadPoseNet
from .intensity import IntensitySettings, chunk_intensity_ids
from .refiner import IntensityAwareMotionRefiner


def append_pose(refined: torch.Tensor, pose6: torch.Tensor) -> torch.Tensor:
    """refined (T, Q, 1018), pose6 (T, 6) -> (T, Q, 1024)."""
    return torch.cat([refined, pose6[:, None].to(refined.dtype).expand(-1, refined.shape[1], -1)], dim=-1)


@torch.no_grad()
def motion_tokens(expression: ExpressionEncoder, head_pose: HeadPoseNet, refiner: IntensityAwareMotionRefiner,
                  face_crops: torch.Tensor, pose_crops: torch.Tensor, landmarks: np.ndarray,
                  settings: IntensitySettings = IntensitySettings(), out_device: torch.device | str | None = None,
                  progress: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, np.ndarray]:
    """face_crops, pose_crops (N, 3, H, W) in [0, 1] (anywhere: one chunk at a time moves to the nets' device);
    landmarks (N, 5, 2) -> tokens (N, Q, 1024) on ``out_device`` (default: the nets' device) and the intensity ids
    (K, 2) [head, exp] per chunk. ``progress(n)`` after each chunk of n frames."""
    device = next(expression.parameters()).device
    out_device = device if out_device is None else torch.device(out_device)
    ids, _ = chunk_intensity_ids(landmarks, settings)
    out = torch.empty(0)
    for k, start in enumerate(range(0, len(face_crops), settings.chunk)):
        sl = slice(start, start + settings.chunk)
        feat = expression(face_crops[sl].to(device))                                       # (T, 512)
        refined = refiner(feat, torch.tensor([ids[k, 0]]), torch.tensor([ids[k, 1]]))     # (T, Q, 1018)
        chunk = append_pose(refined, head_pose.pose_embedding(pose_crops[sl].to(device)))  # (T, Q, 1024)
        if k == 0:
            out = torch.empty((len(face_crops), *chunk.shape[1:]), dtype=chunk.dtype, device=out_device)
        out[sl] = chunk.to(out_device)
        if progress is not None:
            progress(chunk.shape[0])
    return out, ids


__all__ = ["append_pose", "motion_tokens"]
