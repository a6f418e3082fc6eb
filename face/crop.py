"""Square face crops from a :class:`FaceTrack`, stable over a clip, and the :class:`CropInfo` that undoes them.

Box geometry (per frame, in source pixels): the centre is the centre of the landmarks' extent, moved by
``offset_x``/``offset_y`` times the extent (negative ``offset_y`` moves the box up, towards the hair); the side is
``scale`` times the larger side of the landmarks' extent. Then, by ``mode``:

* ``"per_frame"``: each frame's own box (follows every landmark jitter);
* ``"smooth"``: centre and side averaged over a centred moving window of ``window`` frames (shorter at the clip ends);
* ``"fixed"``: one box for the whole clip, the smallest square holding every frame's box (the margin is kept in every
  frame; the face looks smaller when the head moves a lot).

Boxes are rounded to whole pixels (``x0, y0, size``), so a crop is an exact copy of a source region plus one resize
and paste-back is exact outside its mask. Parts of a box outside the frame are padded (``pad_mode``: "replicate"
edge pixels, "black", or "reflect"), and recorded in ``CropInfo.outside``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from .constants import (DEFAULT_CROP_SIZE, DEFAULT_OFFSET_Y, DEFAULT_SCALE, DEFAULT_WINDOW, PAD_MODES,
                        STABILITY_MODES)
from .frames import Frames, as_batch, frame_float, frame_size
from .track import FaceTrack

_CV_BORDER = {"replicate": cv2.BORDER_REPLICATE, "black": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


@dataclass
class CropInfo:
    """Where each crop came from. ``boxes`` is ``[N, 3]`` float64 ``x0, y0, size`` in pixels of the ``height`` x
    ``width`` source frames (whole numbers; ``x0``/``y0`` may be negative or the box may pass the far edge);
    ``size`` is the side of the output crops; ``outside`` is ``[N]`` bool, True where the box left the frame and was
    padded with ``pad_mode``."""

    height: int
    width: int
    boxes: np.ndarray
    size: int
    pad_mode: str = "replicate"
    outside: Optional[np.ndarray] = None
    params: dict = field(default_factory=dict)  # how the boxes were made (scale, offsets, mode, window)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 3)
        if self.outside is None:
            self.outside = np.array([box_outside(b, self.height, self.width) for b in self.boxes], bool)
        self.outside = np.asarray(self.outside, bool)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def num_frames(self) -> int:
        return len(self.boxes)

    def box(self, i: int) -> tuple[int, int, int]:
        """Integer ``(x0, y0, side)`` of frame ``i``."""
        x0, y0, s = self.boxes[i]
        return int(round(x0)), int(round(y0)), max(1, int(round(s)))

    def to_crop_coords(self, points: np.ndarray, i: int) -> np.ndarray:
        """Source-pixel points ``[..., 2+]`` of frame ``i`` -> pixels of its ``size`` x ``size`` crop (z scaled too)."""
        x0, y0, s = self.box(i)
        k = self.size / s
        out = np.array(points, np.float32, copy=True)
        out[..., 0] = (out[..., 0] - x0) * k
        out[..., 1] = (out[..., 1] - y0) * k
        if out.shape[-1] > 2:
            out[..., 2:] *= k
        return out

    def rescaled(self, height: int, width: int) -> "CropInfo":
        """The same boxes for frames resized to ``height`` x ``width`` (aspect ratio must match within 1%)."""
        if (height, width) == (self.height, self.width):
            return self
        ky, kx = height / self.height, width / self.width
        if abs(ky / kx - 1) > 0.01:
            raise ValueError(f"frames of {width}x{height} do not have the aspect ratio of the cropped frames "
                             f"({self.width}x{self.height}); connect the original frames that were cropped")
        k = (kx + ky) / 2
        return CropInfo(height=height, width=width, boxes=np.round(self.boxes * k), size=self.size,
                        pad_mode=self.pad_mode, params=dict(self.params, rescaled_from=[self.height, self.width]))

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "size": self.size, "pad_mode": self.pad_mode,
                "boxes": self.boxes.tolist(), "outside": self.outside.tolist(), "params": dict(self.params)}

    @staticmethod
    def from_dict(d: dict) -> "CropInfo":
        return CropInfo(height=int(d["height"]), width=int(d["width"]), boxes=np.asarray(d["boxes"], np.float64),
                        size=int(d["size"]), pad_mode=d.get("pad_mode", "replicate"),
                        outside=None if d.get("outside") is None else np.asarray(d["outside"], bool),
                        params=dict(d.get("params", {})))


def box_outside(box, height: int, width: int) -> bool:
    x0, y0, s = box
    return bool(x0 < 0 or y0 < 0 or x0 + s > width or y0 + s > height)


# ---------------------------------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------------------------------
def landmark_boxes(track: FaceTrack, scale: float = DEFAULT_SCALE, offset_x: float = 0.0,
                   offset_y: float = DEFAULT_OFFSET_Y) -> np.ndarray:
    """Per-frame square boxes as ``[N, 3]`` float64 ``cx, cy, side`` (centre form, not rounded).

    Raises :class:`NoFaceError` if a frame has no landmarks (fill them first)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    track.require_all()
    out = np.empty((track.num_frames, 3), np.float64)
    for i in range(track.num_frames):
        xy = track.points(i).astype(np.float64)
        lo, hi = xy.min(0), xy.max(0)
        extent = float(max(hi - lo))
        cx, cy = (lo + hi) / 2
        out[i] = (cx + offset_x * extent, cy + offset_y * extent, max(1.0, extent * scale))
    return out


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over axis 0 (``[N, ...]``); the window shrinks at the ends (no padding bias)."""
    n = len(values)
    half = max(0, int(window) // 2)
    if half == 0 or n <= 1:
        return values.astype(np.float64, copy=True)
    c = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0, dtype=np.float64)])
    i = np.arange(n)
    lo, hi = np.maximum(0, i - half), np.minimum(n, i + half + 1)
    cnt = (hi - lo).reshape((-1,) + (1,) * (values.ndim - 1))
    return (c[hi] - c[lo]) / cnt


def stabilize_boxes(centre_boxes: np.ndarray, mode: str = "smooth", window: int = DEFAULT_WINDOW) -> np.ndarray:
    """``[N, 3]`` ``cx, cy, side`` -> stabilised ``[N, 3]`` ``cx, cy, side`` (see the module docstring)."""
    if mode not in STABILITY_MODES:
        raise ValueError(f"unknown stability mode {mode!r}: use one of {', '.join(STABILITY_MODES)}")
    b = np.asarray(centre_boxes, np.float64)
    if mode == "per_frame" or len(b) == 1:
        return b.copy()
    if mode == "smooth":
        if window < 1:
            raise ValueError(f"smoothing window must be >= 1 frame, got {window}")
        return moving_average(b, window)
    half = b[:, 2] / 2
    x0, y0 = (b[:, 0] - half).min(), (b[:, 1] - half).min()
    x1, y1 = (b[:, 0] + half).max(), (b[:, 1] + half).max()
    side = max(x1 - x0, y1 - y0)
    return np.tile([(x0 + x1) / 2, (y0 + y1) / 2, side], (len(b), 1))


def to_corner_boxes(centre_boxes: np.ndarray) -> np.ndarray:
    """``cx, cy, side`` -> whole-pixel ``x0, y0, side`` (``[N, 3]`` float64)."""
    b = np.asarray(centre_boxes, np.float64)
    side = np.maximum(1, np.round(b[:, 2]))
    return np.stack([np.round(b[:, 0] - side / 2), np.round(b[:, 1] - side / 2), side], axis=1)


def compute_crop_boxes(track: FaceTrack, scale: float = DEFAULT_SCALE, offset_x: float = 0.0,
                       offset_y: float = DEFAULT_OFFSET_Y, mode: str = "smooth",
                       window: int = DEFAULT_WINDOW) -> np.ndarray:
    """Stable whole-pixel square boxes ``[N, 3]`` (``x0, y0, side``) for every frame of ``track``."""
    return to_corner_boxes(stabilize_boxes(landmark_boxes(track, scale, offset_x, offset_y), mode, window))


# ---------------------------------------------------------------------------------------------------------------------
# cropping
# ---------------------------------------------------------------------------------------------------------------------
def resize_square(img: np.ndarray, side: int) -> np.ndarray:
    """Resize ``[h, w, C]`` float32 to ``[side, side, C]``: INTER_AREA to shrink, INTER_CUBIC to enlarge (clipped
    to 0..1)."""
    h, w = img.shape[:2]
    if (h, w) == (side, side):
        return img.copy()
    interp = cv2.INTER_AREA if side < min(h, w) else cv2.INTER_CUBIC
    out = cv2.resize(img, (side, side), interpolation=interp)
    if out.ndim == 2:
        out = out[..., None]
    return np.clip(out, 0.0, 1.0) if interp == cv2.INTER_CUBIC else out


def extract_box(frame: np.ndarray, box, pad_mode: str = "replicate") -> np.ndarray:
    """The ``side`` x ``side`` region of ``frame`` (``[H, W, C]`` float32) at whole-pixel ``box = (x0, y0, side)``,
    padded where it leaves the frame."""
    h, w = frame.shape[:2]
    x0, y0, s = (int(round(v)) for v in box)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    if sx1 <= sx0 or sy1 <= sy0:  # entirely outside: nothing to replicate
        return np.zeros((s, s, frame.shape[2]), np.float32)
    region = frame[sy0:sy1, sx0:sx1]
    top, left, bottom, right = sy0 - y0, sx0 - x0, y0 + s - sy1, x0 + s - sx1
    if top or left or bottom or right:
        if pad_mode == "reflect" and (max(top, bottom) >= region.shape[0] or max(left, right) >= region.shape[1]):
            pad_mode = "replicate"  # reflection needs a region larger than the pad
        region = cv2.copyMakeBorder(np.ascontiguousarray(region), top, bottom, left, right, _CV_BORDER[pad_mode],
                                    value=(0.0, 0.0, 0.0, 0.0))
        if region.ndim == 2:
            region = region[..., None]
    return region


def crop_frames(images: Frames, boxes: np.ndarray, size: int = DEFAULT_CROP_SIZE, pad_mode: str = "replicate",
                input_name: str = "images", progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Crop whole-pixel ``boxes`` (``[N, 3]``, N = 1 or the batch size) from ``images`` (IMAGE ``[B, H, W, 3]``) and
    resize each to ``size`` -> IMAGE ``[B, size, size, 3]`` float32."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {pad_mode!r}: use one of {', '.join(PAD_MODES)}")
    if size < 8:
        raise ValueError(f"crop size must be at least 8 pixels, got {size}")
    images = as_batch(images, input_name)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 3)
    n = len(images)
    if len(boxes) not in (1, n):
        raise ValueError(f"{len(boxes)} crop boxes for {n} frames of input '{input_name}'")
    out = torch.empty((n, size, size, 3), dtype=torch.float32)
    out_np = out.numpy()  # fill through numpy: much faster than per-frame torch copies
    for i in range(n):
        region = extract_box(frame_float(images, i), boxes[i if len(boxes) > 1 else 0], pad_mode)
        out_np[i] = resize_square(region, size)
        if progress is not None:
            progress(1)
    return out


def crop_faces(images: Frames, track: FaceTrack, size: int = DEFAULT_CROP_SIZE, scale: float = DEFAULT_SCALE,
               offset_x: float = 0.0, offset_y: float = DEFAULT_OFFSET_Y, mode: str = "smooth",
               window: int = DEFAULT_WINDOW, pad_mode: str = "replicate", input_name: str = "images",
               progress: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, CropInfo]:
    """Square face crops of ``images`` (IMAGE ``[B, H, W, 3]``) around ``track``'s landmarks.

    ``track`` must have B frames of the same size (or 1 frame: its box is used for every frame).
    Returns ``(crops [B, size, size, 3] float32 0..1, CropInfo)``."""
    images = as_batch(images, input_name)
    h, w = frame_size(images)
    if (track.height, track.width) != (h, w):
        raise ValueError(f"the face landmarks were detected on {track.width}x{track.height} frames but input "
                         f"'{input_name}' is {w}x{h}; connect the same images to the landmark detector and the crop")
    if track.num_frames not in (1, len(images)):
        raise ValueError(f"the face landmarks have {track.num_frames} frames but input '{input_name}' has "
                         f"{len(images)}; detect landmarks on the same batch you crop")
    boxes = compute_crop_boxes(track, scale, offset_x, offset_y, mode, window)
    if len(boxes) == 1 and len(images) > 1:
        boxes = np.repeat(boxes, len(images), axis=0)
    crops = crop_frames(images, boxes, size, pad_mode, input_name, progress)
    info = CropInfo(height=h, width=w, boxes=boxes, size=int(size), pad_mode=pad_mode,
                    params={"scale": scale, "offset_x": offset_x, "offset_y": offset_y, "mode": mode,
                            "window": window})
    return crops, info


def crop_track(track: FaceTrack, info: CropInfo) -> FaceTrack:
    """``track`` with its landmarks and boxes in the crops' pixel coordinates (``info.size`` square frames)."""
    landmarks, boxes = [], np.full_like(track.boxes, np.nan)
    for i, lm in enumerate(track.landmarks):
        j = i if len(info) > 1 else 0
        if lm is None:
            landmarks.append(None)
            continue
        c = info.to_crop_coords(lm, j)
        landmarks.append(c)
        boxes[i] = (c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max())
    return FaceTrack(num_frames=track.num_frames, height=info.size, width=info.size, landmarks=landmarks, boxes=boxes,
                     scores=track.scores.copy(), face_counts=track.face_counts.copy(), face_index=track.face_index,
                     backend=track.backend, filled=dict(track.filled))
