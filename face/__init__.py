"""Face detection (MediaPipe, 478 landmarks), stable square face crops, and feathered paste-back.

Plain numpy/torch/OpenCV; importable without ComfyUI. Names are loaded lazily (PEP 562), so importing this package
or :mod:`.constants` costs nothing; OpenCV loads with the first real use and MediaPipe when a detector first runs.

    det = FaceDetector()                                   # auto backend: task file if present, else bundled models
    track = det.track(images, on_missing="fill_nearest")   # images: IMAGE [B, H, W, 3] float 0..1
    crops, info = crop_faces(images, track, size=512)      # crops [B, 512, 512, 3], CropInfo
    frames, masks = paste_back(generated, info, images)    # frames [G, H, W, 3], masks [G, H, W]
"""
from __future__ import annotations

import importlib

from .constants import (BACKENDS, FEATHER_UNITS, FRAME_RULES, MASK_SHAPES, ON_MISSING, PAD_MODES,  # noqa: F401
                        STABILITY_MODES)

_EXPORTS = {
    "track": ("LANDMARK_COUNT", "Face", "FaceTrack", "NoFaceError"),
    "detect": ("FaceDetector", "bundled_available", "detect_landmarks", "task_model_file"),
    "crop": ("CropInfo", "compute_crop_boxes", "crop_faces", "crop_frames", "crop_track", "landmark_boxes",
             "stabilize_boxes"),
    "paste": ("box_mask", "paste_back"),
    "draw": ("draw_landmarks",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["BACKENDS", "FEATHER_UNITS", "FRAME_RULES", "MASK_SHAPES", "ON_MISSING", "PAD_MODES", "STABILITY_MODES",
           *_WHERE]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
