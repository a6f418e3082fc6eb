"""HunyuanPortrait driving conditions: everything the sampler needs that does not depend on sampling settings.

From the reference portrait (any size) and the driving frames (an IMAGE batch):

* the official pre-processing (:mod:`.preprocess`) with the YOLOv5-face detector: the 3x square source crop (kept
  for paste-back), the DINO input, the aligned ArcFace face, the fixed head crop and the per-frame expression crops;
* the appearance tokens (DINOv2 + IMAdapter with the ArcFace embedding, then the projector): (1, 64, 1024);
* the unpadded motion tokens (expression encoder -> intensity-aware refiner, head pose), with intensity ids per
  chunk of ``intensity_chunk`` driving frames: (N, 64, 1024).

Computed once per (models, reference, driving) and kept on the host, so that trying seeds, guidance or windows
re-runs only the sampler. Driving frames without a face stop with an error naming them, or (``fill_nearest``) take
the detection of the nearest frame that has one (reported).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..face.frames import frame_uint8
from ..face.track import NoFaceError, format_ranges
from . import preprocess
from .pipeline import appearance_tokens, identity_embedding
from ..motion.hunyuan.intensity import IntensitySettings
from ..motion.hunyuan.tokens import motion_tokens

log = logging.getLogger(__name__)

ON_MISSING = ("error", "fill_nearest")
DEFAULT_SIZE = 512
SIZE_MULTIPLE = 64   # the SVD UNet downsamples the 1/8 latent three times


class Uint8Frames(Sequence):
    """An IMAGE batch (B, H, W, 3) float in [0, 1] seen as uint8 RGB frames, converted one at a time."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return frame_uint8(self.images, i)


@dataclass
class PortraitConditions:
    source: preprocess.SourceInputs
    original: np.ndarray            # (H0, W0, 3) uint8, the reference as given (paste-back target)
    driving: preprocess.DrivingInputs
    id_embedding: torch.Tensor      # (1, 512) float32, zeros without ArcFace
    appearance: torch.Tensor        # (1, 64, 1024) float32, host
    motion: torch.Tensor            # (N, 64, 1024) float32, host, unpadded
    intensity_ids: np.ndarray       # (K, 2) int64 [head, exp] per chunk
    size: int                       # side of the square crop the model animates
    fps: float = 0.0                # driving frame rate (0: unknown)
    audio: Optional[dict] = None    # the driving video's AUDIO, carried to the output video
    filled: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    def reference_image(self) -> torch.Tensor:
        """The crop the model animates as an IMAGE (1, S, S, 3)."""
        return torch.from_numpy(np.asarray(self.source.crop, dtype=np.float32) / 255.0)[None]

    def crop_info(self):
        """:class:`~..face.crop.CropInfo` of the source crop, for Face Paste Back."""
        from ..face.crop import CropInfo

        x1, y1, x2, y2 = self.source.crop_bbox
        h, w = self.original.shape[:2]
        return CropInfo(height=h, width=w, boxes=np.array([[x1, y1, x2 - x1]], np.float64), size=self.size,
                        pad_mode="black", params={"source": "HunyuanPortrait Conditions", "expand_ratio": 1.0,
                                                  "box_height": y2 - y1})

    def report(self) -> str:
        ids = ", ".join(f"{h}/{e}" for h, e in self.intensity_ids.tolist())
        lines = [f"{self.num_frames} driving frames" + (f" at {self.fps:g} fps" if self.fps else ""),
                 f"source crop {list(self.source.crop_bbox)} of a {self.original.shape[1]}x{self.original.shape[0]} "
                 f"image, animated at {self.size}x{self.size}",
                 f"intensity ids (head/expression) per chunk: {ids}"]
        if self.filled:
            lines.append(f"no face in driving frames {format_ranges(self.filled)}: used the nearest frame's face")
        return "\n".join(lines + self.notes)


def detect_driving(frames: Sequence[np.ndarray], detect, on_missing: str = "error",
                   progress: Optional[Callable[[int], None]] = None) -> tuple[list, list[int]]:
    """The largest face of every frame as ``(box xywh, landmarks (5, 2))``; frames without one are named in a
    :class:`NoFaceError` (``error``) or take the nearest detected frame's face (``fill_nearest``)."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    found: list = []
    for frame in frames:
        boxes, landmarks = detect(frame)
        boxes = np.asarray(boxes)
        if boxes.size:
            i = preprocess.largest_face(boxes)
            found.append((boxes[i], np.asarray(landmarks)[i]))
        else:
            found.append(None)
        if progress is not None:
            progress(1)
    missing = [i for i, d in enumerate(found) if d is None]
    if missing and (on_missing == "error" or len(missing) == len(found)):
        hint = (preprocess.NO_FACE_HINT if len(missing) == len(found) else
                "set 'on_missing' to 'fill_nearest' to reuse the nearest frame's face, or trim those frames")
        raise NoFaceError(missing, len(found), input_name="driving", hint=hint)
    have = np.array([i for i, d in enumerate(found) if d is not None])
    for i in missing:
        found[i] = found[int(have[np.argmin(np.abs(have - i))])]
    return found, missing


def check_size(size: int) -> None:
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        raise ValueError(f"size {size} must be a positive multiple of {SIZE_MULTIPLE} (HunyuanPortrait works at 512)")


@torch.no_grad()
def portrait_conditions(bundle, reference: torch.Tensor, driving: torch.Tensor, *, size: int = DEFAULT_SIZE,
                        intensity_chunk: int = 25, on_missing: str = "error", fps: float = 0.0,
                        audio: Optional[dict] = None, use_arcface: bool = True,
                        progress: Optional[Callable[[int], None]] = None) -> PortraitConditions:
    """reference IMAGE (B, H, W, 3) (the first image is used), driving IMAGE (N, H', W', 3) -> conditions.

    ``progress(n)`` is called once per driving frame detected and once per frame encoded (2 N + 2 calls)."""
    check_size(size)
    if reference.ndim != 4 or reference.shape[0] < 1:
        raise ValueError("input 'reference' must be an IMAGE with at least one image")
    if driving.ndim != 4 or driving.shape[0] < 1:
        raise ValueError("input 'driving' must be an IMAGE batch with at least one frame (a video or an image)")
    rt = bundle.runtime
    step = progress or (lambda n: None)
    detect = bundle.detector()
    original = frame_uint8(reference, 0)
    source = preprocess.prepare_source(original, detect, image_size=size, input_name="reference")
    step(1)
    frames = Uint8Frames(driving)
    detections, filled = detect_driving(frames, detect, on_missing, progress=step)
    inputs = preprocess.prepare_driving(frames, detect, image_size=size, detections=detections)

    notes: list[str] = []
    if use_arcface and bundle.arcface is not None:
        embedding = torch.from_numpy(bundle.arcface.embed(source.arcface_face))               # (1, 512)
    else:
        embedding = identity_embedding(None)
        if use_arcface:
            notes.append("ArcFace not loaded: zero identity embedding")
    rt.load(bundle.appearance_models)
    appearance = appearance_tokens(bundle.models(), source.dino_image, embedding).float().cpu()   # (1, 64, 1024)
    step(1)
    rt.load(bundle.motion_models)
    tokens, ids = _motion_tokens(bundle, inputs, intensity_chunk, step)                     # (N, 64, 1024)
    return PortraitConditions(source=source, original=original, driving=inputs, id_embedding=embedding,
                              appearance=appearance, motion=tokens, intensity_ids=ids, size=size, fps=float(fps),
                              audio=audio, filled=filled, notes=notes)


def _motion_tokens(bundle, inputs: preprocess.DrivingInputs, chunk: int, step) -> tuple[torch.Tensor, np.ndarray]:
    """Motion tokens, one chunk of crops on the motion nets' device at a time -> (N, 64, 1024) float32 on the host,
    ids (K, 2)."""
    tokens, ids = motion_tokens(bundle.expression.module, bundle.head_pose.module, bundle.refiner.module,
                                inputs.motion_face, inputs.motion_pose, inputs.landmarks,
                                IntensitySettings(chunk=chunk), out_device="cpu", progress=step)
    return tokens.float(), ids


__all__ = ["DEFAULT_SIZE", "ON_MISSING", "PortraitConditions", "SIZE_MULTIPLE", "Uint8Frames", "check_size",
           "detect_driving", "portrait_conditions"]
