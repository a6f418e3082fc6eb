"""Frame access shared by the face modules: IMAGE batches (torch or numpy) to per-frame numpy arrays and back.

An IMAGE batch is ``[B, H, W, C]`` float in 0..1 (ComfyUI's layout); a single ``[H, W, C]`` frame or a list of frames is
accepted too. ``C`` may be 1 (grey), 3 (RGB) or 4 (RGBA, alpha dropped).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

Frames = Union[torch.Tensor, np.ndarray, Sequence[np.ndarray]]


def as_batch(images: Frames, name: str = "images") -> Frames:
    """``images`` with a batch axis: ``[H, W, C]`` becomes ``[1, H, W, C]``. Raises ``ValueError`` for empty or
    malformed input, naming the input."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"input '{name}' must be an IMAGE batch [B, H, W, 3], got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"input '{name}' is an empty batch (0 frames); connect at least one image")
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(f"input '{name}' has empty frames of size {images.shape[2]}x{images.shape[1]}")
        return images
    frames = list(images)
    if not frames:
        raise ValueError(f"input '{name}' is an empty batch (0 frames); connect at least one image")
    return frames


def frame_size(images: Frames) -> tuple[int, int]:
    """``(height, width)`` of the first frame."""
    first = images[0]
    return int(first.shape[0]), int(first.shape[1])


def frame_float(images: Frames, i: int) -> np.ndarray:
    """Frame ``i`` as a float32 RGB array ``[H, W, 3]`` in 0..1 (uint8 input is scaled by 1/255)."""
    f = images[i]
    if isinstance(f, torch.Tensor):
        f = f.detach().to("cpu", torch.float32).numpy()
    f = np.asarray(f)
    if f.dtype == np.uint8:
        f = f.astype(np.float32) / 255.0
    f = f.astype(np.float32, copy=False)
    return _rgb(f)


def frame_uint8(images: Frames, i: int) -> np.ndarray:
    """Frame ``i`` as a contiguous uint8 RGB array ``[H, W, 3]`` (what MediaPipe takes)."""
    f = images[i]
    if isinstance(f, torch.Tensor):
        f = f.detach().to("cpu")
        if f.dtype != torch.uint8:
            f = (f.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        f = f.numpy()
    f = np.asarray(f)
    if f.dtype != np.uint8:
        f = (np.clip(f.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(_rgb(f))


def _rgb(f: np.ndarray) -> np.ndarray:
    if f.ndim == 2:
        f = f[..., None]
    if f.shape[-1] == 1:
        return np.repeat(f, 3, axis=-1)
    if f.shape[-1] == 4:
        return f[..., :3]
    return f


def source_index(i: int, n: int, rule: str = "loop") -> int:
    """Which of ``n`` items serves output frame ``i``: ``n == 1`` broadcasts; ``loop`` wraps (``i % n``); ``clamp``
    holds the last item (``min(i, n - 1)``)."""
    if n == 1:
        return 0
    if rule == "loop":
        return i % n
    if rule == "clamp":
        return min(i, n - 1)
    raise ValueError(f"unknown frame rule {rule!r}: use 'loop' or 'clamp'")
