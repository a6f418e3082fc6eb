"""MediaPipe landmarks of one face per frame for the metrics: frames without the face are None (not filled)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

# MediaPipe 478-point mesh indices used by the metrics (subject's right eye = image left on a frontal face).
RIGHT_IRIS, LEFT_IRIS = 468, 473
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291          # mouth corners (image left, image right)
FIVE_POINTS = (RIGHT_IRIS, LEFT_IRIS, NOSE_TIP, MOUTH_RIGHT, MOUTH_LEFT)  # ArcFace template order
# the 40 lip points of MediaPipe's FACEMESH_LIPS: outer contour, then inner contour
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


def track_faces(images, detector=None, input_name: str = "images",
                progress: Optional[Callable[[int], None]] = None) -> list[Optional[np.ndarray]]:
    """``[N]`` landmarks ``(478, 3)`` float64 pixels of the largest face followed through ``images`` (IMAGE
    ``[N, H, W, 3]``), None where the face was not found. ``detector``: a :class:`~..face.detect.FaceDetector`
    (default: auto backend, no download)."""
    from ..face.detect import FaceDetector
    from ..face.track import NoFaceError

    own = detector is None
    detector = detector or FaceDetector()
    try:
        track = detector.track(images, on_missing="fill_nearest", input_name=input_name, progress=progress)
    except NoFaceError:  # no frame at all has a face: nothing can be measured
        return [None] * len(images)
    finally:
        if own:
            detector.close()
    return [None if i in track.filled or lm is None else np.asarray(lm, np.float64)
            for i, lm in enumerate(track.landmarks)]


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
