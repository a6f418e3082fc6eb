"""MediaPipe landmarks of one face per frame for the metrics: frames without the face are None (not filled)."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np

_LOCK = threading.Lock()

# MediaPipe 478-point mesh indices used by the metrics (subject's right eye = image left on a frontal face).
RIGHT_IRIS, LEFT_IRIS = 468, 473
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291          # mouth corners (image left, image right)
FIVE_POINTS = (RIGHT_IRIS, LEFT_IRIS, NOSE_TIP, MOUTH_RIGHT, MOUTH_LEFT)  # ArcFace template order
# the 40 lip points of MediaPipe's FACEMESH_LIPS: outer contour, then inner contour
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


_CACHE: "OrderedDict[tuple, list]" = OrderedDict()  # recent clips' landmarks: several metrics read the same frames
CACHE_SIZE = 8


def fingerprint(images) -> tuple:
    """A key for the content of an IMAGE batch: its shape and a hash of every frame subsampled on a sparse grid plus
    one full row (cheap; two different clips do not share it in practice)."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(arr[:, ::7, ::7]).tobytes())
    h.update(np.ascontiguousarray(arr[:, arr.shape[1] // 2]).tobytes())
    return tuple(arr.shape), str(arr.dtype), h.hexdigest()


def track_faces(images, detector=None, input_name: str = "images",
                progress: Optional[Callable[[int], None]] = None) -> list[Optional[np.ndarray]]:
    """``[N]`` landmarks ``(478, 3)`` float64 pixels of the largest face followed through ``images`` (IMAGE
    ``[N, H, W, 3]``), None where the face was not found. ``detector``: a :class:`~..face.detect.FaceDetector`
    (default: auto backend, no download). The last few clips' results are kept (keyed by content and detector
    settings), so metrics on the same frames detect them once."""
    from ..face.detect import FaceDetector
    from ..face.track import NoFaceError

    own = detector is None
    detector = detector or FaceDetector()
    key = (fingerprint(images), detector.backend, detector.max_faces, detector.min_confidence)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
    if cached is not None:
        if own:
            detector.close()
        if progress is not None:
            progress(len(images))
        return [None if p is None else p.copy() for p in cached]
    try:
        track = detector.track(images, on_missing="fill_nearest", input_name=input_name, progress=progress)
        points = [None if i in track.filled or lm is None else np.asarray(lm, np.float64)
                  for i, lm in enumerate(track.landmarks)]
    except NoFaceError:  # no frame at all has a face: nothing can be measured
        points = [None] * len(images)
    finally:
        if own:
            detector.close()
    with _LOCK:
        _CACHE[key] = points
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return [None if p is None else p.copy() for p in points]


def require_face(points: list[Optional[np.ndarray]], input_name: str) -> None:
    """Raise the pack's no-face error when no frame of an input (a reference, a driving video) has a face."""
    from ..face.track import NoFaceError

    if all(p is None for p in points):
        raise NoFaceError(list(range(len(points))), len(points), input_name)


def eye_frame(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(origin, scale, rotation 2x2)`` of a face: the midpoint between the irises, their distance, and the rotation
    that makes the eye line horizontal. ``normalize`` maps pixels into this frame (inter-ocular distance = 1)."""
    a, b = points[RIGHT_IRIS, :2], points[LEFT_IRIS, :2]
    d = b - a
    scale = float(np.hypot(*d)) or 1.0
    c, s = d / scale
    rot = np.array([[c, s], [-s, c]])
    return (a + b) / 2, scale, rot


def normalize(points: np.ndarray, idx=None) -> np.ndarray:
    """Points ``(k, 2)`` in the face's eye frame (origin between the irises, x along the eye line, unit = the
    inter-ocular distance): position, size and in-plane rotation of the face removed."""
    origin, scale, rot = eye_frame(points)
    xy = points[list(idx) if idx is not None else slice(None), :2]
    return (xy - origin) @ rot.T / scale


__all__ = ["FIVE_POINTS", "LIPS", "eye_frame", "normalize", "require_face", "track_faces"]
