"""Paste generated face crops back into the original frames with a feathered mask.

Frame-count rule: the output has one frame per *generated* frame. Output frame ``i`` uses original frame
``source_index(i, B_orig, frame_rule)`` and crop box ``source_index(i, N_boxes, frame_rule)``: a batch of 1 is
broadcast to every frame; a longer one is indexed by ``i`` and, past its end, wraps around (``"loop"``) or holds its
last frame (``"clamp"``).

Each generated frame (any size) is resized to its box (INTER_AREA to shrink, INTER_CUBIC to enlarge), then blended as
``out = gen * mask + orig * (1 - mask)`` inside the part of the box that lies in the frame. The mask is exactly 0
outside the box, so those pixels are the original bit for bit (and the resized generated ones where it is 1); it rises
from 0 at the box edge to 1 over ``feather`` pixels (a fraction of the box side with ``feather_unit="fraction"``),
with a smoothstep profile.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from .constants import DEFAULT_FEATHER, FEATHER_UNITS, FRAME_RULES, MASK_SHAPES
from .crop import CropInfo
from .frames import Frames, as_batch, frame_float, frame_size, source_index



def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=16)
def _box_mask_cached(side: int, feather: float, shape: str) -> np.ndarray:
    u = np.arange(side, dtype=np.float64) + 0.5 - side / 2.0  # pixel centres relative to the box centre
    half = side / 2.0
    if feather <= 0:
        if shape == "ellipse":
            return (u[None, :] ** 2 + u[:, None] ** 2 <= half * half).astype(np.float32)
        return np.ones((side, side), np.float32)
    if shape == "rectangle":  # product of 1-D ramps: straight edges, softened corners
        ramp = _smoothstep((half - np.abs(u)) / feather)
        return (ramp[:, None] * ramp[None, :]).astype(np.float32)
    if shape == "ellipse":  # the circle inscribed in the (square) box
        inside = half - np.sqrt(u[None, :] ** 2 + u[:, None] ** 2)
        return _smoothstep(inside / feather).astype(np.float32)
    if shape == "rounded_rectangle":  # signed distance to a rounded square
        r = min(half, max(feather, 0.15 * side))
        qx = np.abs(u)[None, :] - (half - r)
        qy = np.abs(u)[:, None] - (half - r)
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        sdf = outside + np.minimum(np.maximum(qx, qy), 0) - r
        return _smoothstep(-sdf / feather).astype(np.float32)
    raise ValueError(f"unknown mask shape {shape!r}: use one of {', '.join(MASK_SHAPES)}")


def box_mask(side: int, feather: float = DEFAULT_FEATHER, feather_unit: str = "fraction",
             shape: str = "rounded_rectangle") -> np.ndarray:
    """Soft mask ``[side, side]`` float32 in 0..1 for one box: 0 at the box edge, 1 from ``feather`` inwards."""
    if feather_unit not in FEATHER_UNITS:
        raise ValueError(f"unknown feather unit {feather_unit!r}: use one of {', '.join(FEATHER_UNITS)}")
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    px = feather * side if feather_unit == "fraction" else float(feather)
    px = min(px, side / 2.0)
    if shape not in MASK_SHAPES:
        raise ValueError(f"unknown mask shape {shape!r}: use one of {', '.join(MASK_SHAPES)}")
    return _box_mask_cached(int(side), round(float(px), 4), shape)


def _resize_to(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (side, side):
        return img
    interp = cv2.INTER_AREA if side < min(h, w) else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(img), (side, side), interpolation=interp)
    return np.clip(out, 0.0, 1.0) if interp == cv2.INTER_CUBIC else out


class FramePaster:
    """Paste-back prepared once (checked sizes, boxes rescaled to ``original``) and applied one frame at a time.

    :meth:`frame` composites generated frame ``i`` (``[h, w, 3]`` float 0..1, any size) into its original frame;
    :func:`paste_back` fills a whole batch with it, and a streaming writer can paste a clip as it comes and keep only
    one full-size frame in memory (frame ``i`` depends on ``i`` alone, so the total need not be known).
    """

    def __init__(self, info: CropInfo, original: Frames, feather: float = DEFAULT_FEATHER,
                 feather_unit: str = "fraction", shape: str = "rounded_rectangle", frame_rule: str = "loop"):
        if frame_rule not in FRAME_RULES:
            raise ValueError(f"unknown frame rule {frame_rule!r}: use one of {', '.join(FRAME_RULES)}")
        original = as_batch(original, "original")
        if len(info) == 0:
            raise ValueError("the crop info holds no boxes")
        h, w = frame_size(original)
        if (h, w) != (info.height, info.width):
            try:
                info = info.rescaled(h, w)
            except ValueError:
                raise ValueError(f"input 'original' is {w}x{h} but the crop info was made from {info.width}x"
                                 f"{info.height} frames; connect the images that went into Face Crop (or a resized "
                                 "copy with the same aspect ratio)") from None
        n_orig, n_box = len(original), len(info)
        if n_orig > 1 and n_box > 1 and n_orig != n_box:
            raise ValueError(f"input 'original' has {n_orig} frames but the crop info has {n_box} boxes; connect the "
                             "frames that went into Face Crop (or a single image)")
        self.info, self.original, self.height, self.width = info, original, h, w
        self.feather, self.feather_unit, self.shape, self.frame_rule = feather, feather_unit, shape, frame_rule
        self._cached = (None, None)

    def _original(self, j: int) -> np.ndarray:
        if self._cached[0] != j:
            self._cached = (j, frame_float(self.original, j))
        return self._cached[1]

    def frame(self, i: int, generated: np.ndarray, out: Optional[np.ndarray] = None,
              mask_out: Optional[np.ndarray] = None) -> np.ndarray:
        """Output frame ``i`` (``[H, W, 3]`` float32) with generated image ``generated`` ``[h, w, 3]`` pasted at its
        box; written into ``out`` when given. ``mask_out`` (``[H, W]``, zeros) receives the mask inside the box."""
        h, w = self.height, self.width
        frame = np.empty((h, w, 3), np.float32) if out is None else out
        frame[...] = self._original(source_index(i, len(self.original), self.frame_rule))
        x0, y0, s = self.info.box(source_index(i, len(self.info), self.frame_rule))
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
        if sx1 > sx0 and sy1 > sy0:
            gen = _resize_to(generated, s)
            m = box_mask(s, self.feather, self.feather_unit, self.shape)
            bx0, by0, bx1, by1 = sx0 - x0, sy0 - y0, sx1 - x0, sy1 - y0
            mr = m[by0:by1, bx0:bx1, None]
            orig = frame[sy0:sy1, sx0:sx1]
            frame[sy0:sy1, sx0:sx1] = gen[by0:by1, bx0:bx1] * mr + orig * (1.0 - mr)  # exact where mr is 0 or 1
            if mask_out is not None:
                mask_out[sy0:sy1, sx0:sx1] = mr[..., 0]
        return frame


def paste_back(generated: Frames, info: CropInfo, original: Frames, feather: float = DEFAULT_FEATHER,
               feather_unit: str = "fraction", shape: str = "rounded_rectangle", frame_rule: str = "loop",
               progress: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite ``generated`` (IMAGE ``[G, h, w, 3]``, any size) into ``original`` (IMAGE ``[B, H, W, 3]``, B = 1
    broadcast) at the boxes of ``info``.

    ``original`` must be the cropped frames' size, or a resized copy with the same aspect ratio (boxes are scaled).
    Returns ``(images [G, H, W, 3] float32, masks [G, H, W] float32)``; see the module docstring for the frame rule.
    Both are allocated once and filled frame by frame.
    """
    paster = FramePaster(info, original, feather, feather_unit, shape, frame_rule)
    generated = as_batch(generated, "generated")
    n_gen, h, w = len(generated), paster.height, paster.width
    out = torch.empty((n_gen, h, w, 3), dtype=torch.float32)
    masks = torch.zeros((n_gen, h, w), dtype=torch.float32)
    out_np, masks_np = out.numpy(), masks.numpy()  # fill through numpy views (fast copies)
    for i in range(n_gen):
        paster.frame(i, frame_float(generated, i), out=out_np[i], mask_out=masks_np[i])
        if progress is not None:
            progress(1)
    return out, masks
