"""How well an animation follows its driver: head pose, expression and mouth distances, frame by frame.

All three read the pack's MediaPipe landmarks (478 points) of the animated frames and of the driving frames, so they
run offline on any media:

* **pose**: head rotation of each face from :func:`..motion.hellomeme.toolkit.approximate_head_pose` (MediaPipe +
  ``solvePnP`` on a canonical face, HelloMeme's offline head pose) on landmarks moved into a 512 px square around the
  face, so the frame size does not matter; the distance is the mean absolute difference of pitch, yaw and roll in
  degrees (the papers' average pose distance, with this head pose estimator instead of a 3DMM).
* **expression**: seven landmark ratios that follow expression and not head position or size (mouth opening and
  width, mouth-corner height, the openness of each eye, the height of each brow over its eye, all in inter-ocular
  distances, measured in 3D where MediaPipe gives depth); the distance is the L2 norm of the difference of the two
  faces' ratios. ``relative`` compares each clip's change from its first measured frame, which removes the
  difference between two people's resting faces (cross-identity reenactment); ``absolute`` compares the ratios as
  they are (self-reenactment, a ground-truth video).
* **mouth**: mouth landmark distance (LMD): the 40 lip points in each face's eye frame (origin between the irises,
  eye line horizontal, inter-ocular distance = 1), mean L2 distance between the two faces' points, in percent of the
  inter-ocular distance; ``relative`` subtracts each clip's first measured mouth shape.

Frames are paired by time when both frame rates are given (``fps`` of the animation, ``driving_fps`` of the
driver), else by index; frames without a face on either side are not measured (None).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .constants import COMPARE_MODES
from .faces import LIPS, normalize, require_face, track_faces
from .series import MetricSeries, time_map

POSE_AXES = ("pitch", "yaw", "roll")
EXPRESSION_FEATURES = ("mouth_open", "mouth_width", "mouth_corners", "right_eye_open", "left_eye_open",
                       "right_brow", "left_brow")
POSE_CROP = 512


# ---- per-face measurements ---------------------------------------------------------------------------------------------
def head_pose_degrees(points: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) degrees of one face from its landmarks ``(478, 2|3)`` in pixels."""
    from ..motion.hellomeme.toolkit import approximate_head_pose

    xy = points[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    centre, side = (lo + hi) / 2, 2.0 * float(max(hi - lo)) or 1.0
    lm = (xy - centre) * (POSE_CROP / side) + POSE_CROP / 2
    angles, _ = approximate_head_pose(lm, POSE_CROP, POSE_CROP)
    return np.degrees(angles.reshape(3).astype(np.float64))


def _dist(points: np.ndarray, a: int, b: int, scale: float) -> float:
    return float(np.linalg.norm(points[a] - points[b])) / scale


def expression_features(points: np.ndarray) -> np.ndarray:
    """The seven ratios of :data:`EXPRESSION_FEATURES` for one face (landmarks ``(478, 3)`` pixels)."""
    p = np.asarray(points, np.float64)
    scale = float(np.linalg.norm(p[468] - p[473])) or 1.0
    eyes = normalize(p, [61, 291, 13, 14])  # eye frame: y grows downwards from the eye line
    corners = (eyes[0, 1] + eyes[1, 1]) / 2 - (eyes[2, 1] + eyes[3, 1]) / 2  # negative: corners above the lip centre
    return np.array([
        _dist(p, 13, 14, scale),                                    # inner lips apart
        _dist(p, 61, 291, scale),                                   # mouth width
        corners,                                                    # smile / frown
        _dist(p, 159, 145, scale),                                  # eyelids, subject's right eye
        _dist(p, 386, 374, scale),                                  # eyelids, subject's left eye
        _dist(p, 105, 159, scale),                                  # brow over eye, right
        _dist(p, 334, 386, scale),                                  # brow over eye, left
    ])


def mouth_shape(points: np.ndarray) -> np.ndarray:
    """The 40 lip points ``(40, 2)`` in the face's eye frame."""
    return normalize(np.asarray(points, np.float64), LIPS)


# ---- clip-level metrics ---------------------------------------------------------------------------------------------------
def _pairs(frames, driving, detector, fps, driving_fps, progress):
    gen = track_faces(frames, detector, input_name="images", progress=progress)
    drv = track_faces(driving, detector, input_name="driving", progress=progress)
    require_face(drv, "driving")
    mapping = time_map(len(gen), len(drv), fps, driving_fps)
    notes = []
    past = sum(1 for j in mapping if j < 0)
    if past:
        notes.append(f"{past} frame(s) past the end of the driving clip are not measured")
    return gen, drv, mapping, notes


def _first(values: list) -> Optional[np.ndarray]:
    return next((v for v in values if v is not None), None)


def pose_distance(frames, driving, detector=None, fps: float = 0.0, driving_fps: float = 0.0,
                  progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """Mean absolute (pitch, yaw, roll) difference in degrees between each frame's head and the driver's."""
    gen, drv, mapping, notes = _pairs(frames, driving, detector, fps, driving_fps, progress)
    values, diffs = [], []
    for i, j in enumerate(mapping):
        if j < 0 or gen[i] is None or drv[j] is None:
            values.append(None)
            continue
        d = np.abs(head_pose_degrees(gen[i]) - head_pose_degrees(drv[j]))
        d = np.minimum(d, 360.0 - d)
        diffs.append(d)
        values.append(float(d.mean()))
    extra = {f"mean_{a}": (round(float(np.mean([d[k] for d in diffs])), 4) if diffs else None)
             for k, a in enumerate(POSE_AXES)}
    return MetricSeries("pose", "mean absolute head rotation difference to the driver (pitch, yaw, roll; "
                        "MediaPipe landmarks + solvePnP)", "deg", "lower", values, extra=extra, notes=notes)


def expression_distance(frames, driving, detector=None, fps: float = 0.0, driving_fps: float = 0.0,
                        compare: str = "relative",
                        progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """L2 distance between the expression ratios of each frame and its driving frame."""
    _check_mode(compare)
    gen, drv, mapping, notes = _pairs(frames, driving, detector, fps, driving_fps, progress)
    gf = [None if p is None else expression_features(p) for p in gen]
    df = [None if p is None else expression_features(p) for p in drv]
    g0, d0 = (_first(gf), _first(df)) if compare == "relative" else (0.0, 0.0)
    values, diffs = [], []
    for i, j in enumerate(mapping):
        if j < 0 or gf[i] is None or df[j] is None:
            values.append(None)
            continue
        d = (gf[i] - g0) - (df[j] - d0)
        diffs.append(np.abs(d))
        values.append(float(np.linalg.norm(d)))
    extra = {"compare": compare, "features": list(EXPRESSION_FEATURES),
             "mean_abs_per_feature": [round(float(v), 5) for v in np.mean(diffs, 0)] if diffs else None}
    return MetricSeries("expression", f"L2 distance of landmark expression ratios to the driver ({compare}; "
                        "inter-ocular units)", "iod", "lower", values, extra=extra, notes=notes)


def mouth_distance(frames, driving, detector=None, fps: float = 0.0, driving_fps: float = 0.0,
                   compare: str = "absolute",
                   progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """Mouth landmark distance (LMD) of each frame to its driving (or ground-truth) frame, in percent of the
    inter-ocular distance."""
    _check_mode(compare)
    gen, drv, mapping, notes = _pairs(frames, driving, detector, fps, driving_fps, progress)
    gm = [None if p is None else mouth_shape(p) for p in gen]
    dm = [None if p is None else mouth_shape(p) for p in drv]
    g0, d0 = (_first(gm), _first(dm)) if compare == "relative" else (0.0, 0.0)
    values = []
    for i, j in enumerate(mapping):
        if j < 0 or gm[i] is None or dm[j] is None:
            values.append(None)
            continue
        d = (gm[i] - g0) - (dm[j] - d0)
        values.append(100.0 * float(np.linalg.norm(d, axis=1).mean()))
    return MetricSeries("mouth", f"mouth landmark distance (LMD, 40 lip points, {compare}) to the driver, % of the "
                        "inter-ocular distance", "% iod", "lower", values, extra={"compare": compare}, notes=notes)


def _check_mode(compare: str) -> None:
    if compare not in COMPARE_MODES:
        raise ValueError(f"unknown compare mode {compare!r}: use one of {', '.join(COMPARE_MODES)}")


__all__ = ["COMPARE_MODES", "expression_distance", "expression_features", "head_pose_degrees", "mouth_distance",
           "mouth_shape", "pose_distance"]
