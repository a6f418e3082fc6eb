"""HunyuanPortrait paste-back (official ``inference.py``): the generated square crops are blended onto the static
source image inside the crop box with a soft rectangular mask.

Frames are converted to uint8 by truncating ``x * 255`` (not rounding); each crop is resized to the box with OpenCV's
bilinear ``resize``; the mask is 1 inside with linear 0 -> 1 ramps over 10% of the box width and height at each
border (product in the corners, outermost row/column exactly 0); the blend runs in float32 and is truncated to uint8.
The background never moves.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch


def video_to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames in [0, 1] (any layout, float32) -> uint8 by truncation of ``x * 255``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().float().numpy()
    return (np.asarray(frames) * 255).astype(np.uint8)


def soft_mask(width: int, height: int, border_ratio: float = 0.1) -> np.ndarray:
    """(height, width, 1) float32 blending mask."""
    mask = np.ones((height, width), dtype=np.float32)
    bw, bh = int(width * border_ratio), int(height * border_ratio)
    if bw > 0:
        mask[:, :bw] = np.linspace(0, 1, bw)[None, :]
        mask[:, -bw:] = np.linspace(1, 0, bw)[None, :]
    if bh > 0:
        mask[:bh, :] *= np.linspace(0, 1, bh)[:, None]
        mask[-bh:, :] *= np.linspace(1, 0, bh)[:, None]
    return mask[..., None]


def paste_back_frame(original: np.ndarray, crop: np.ndarray, box: Sequence[int],
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Blend one uint8 crop (S, S, 3) into ``box`` (x1, y1, x2, y2) of the uint8 ``original`` (H, W, 3)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = original.shape[:2]
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"paste-back box {(x1, y1, x2, y2)} is not inside the {w}x{h} image")
    resized = cv2.resize(np.ascontiguousarray(crop), (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    if mask is None:
        mask = soft_mask(x2 - x1, y2 - y1)
    background = original[y1:y2, x1:x2].astype(np.float32) / 255.0
    foreground = resized.astype(np.float32) / 255.0
    blended = foreground * mask + background * (1 - mask)
    out = original.copy()
    out[y1:y2, x1:x2] = (blended * 255).astype(np.uint8)
    return out


def paste_back(original: np.ndarray, frames: torch.Tensor | np.ndarray, box: Sequence[int],
               border_ratio: float = 0.1) -> np.ndarray:
    """(T, H, W, 3) uint8 full frames from generated crops (T, S, S, 3) (uint8, or float in [0, 1])."""
    if isinstance(frames, torch.Tensor) or np.asarray(frames).dtype != np.uint8:
        frames = video_to_uint8(frames)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask = soft_mask(x2 - x1, y2 - y1, border_ratio)
    original = np.asarray(original)
    return np.stack([paste_back_frame(original, f, (x1, y1, x2, y2), mask) for f in frames])


__all__ = ["paste_back", "paste_back_frame", "soft_mask", "video_to_uint8"]
