"""Per-frame motion tokens of HunyuanPortrait: [refiner output (1018) | rotation in degrees (3) | 0, 0, 0], the
same 6 pose values repeated over the 64 tokens of a frame (the official ``driven_feat``).

:func:`motion_tokens` runs the three motion nets over a driving sequence, one intensity id pair per chunk of
``settings.chunk`` frames (ids from that chunk's landmarks).
"""
from __future__ import annotations

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
                  settings: IntensitySettings = IntensitySettings()) -> tuple[torch.Tensor, np.ndarray]:
    """face_crops, pose_crops (N, 3, H, W) in [0, 1]; landmarks (N, 5, 2) -> tokens (N, Q, 1024) and the intensity
    ids (K, 2) [head, exp] per chunk."""
    ids, _ = chunk_intensity_ids(landmarks, settings)
    out = []
    for k, start in enumerate(range(0, len(face_crops), settings.chunk)):
        sl = slice(start, start + settings.chunk)
        feat = expression(face_crops[sl])                                       # (T, 512)
        refined = refiner(feat, torch.tensor([ids[k, 0]]), torch.tensor([ids[k, 1]]))   # (T, Q, 1018)
        out.append(append_pose(refined, head_pose.pose_embedding(pose_crops[sl])))
    return torch.cat(out), ids


__all__ = ["append_pose", "motion_tokens"]
