"""HelloMeme's official face toolkit on onnxruntime, plus an approximate head pose from MediaPipe landmarks.

The official files (``songkey/hello_group_facemodel``; manifest family ``hellomeme``):

* ``hello_face_det.onnx`` (:class:`FaceBoxDetector`): NanoDet face detector. Input: the BGR frame letterboxed into
  160 wide x 272 high, ``(x / 255 - mean / 255) / (std / 255)``; outputs 3 score maps then 3 box-distribution maps
  (strides 8/16/32, ``reg_max`` 7). Score threshold 0.4, hard NMS at IoU 0.3, int boxes in frame pixels.
* ``hello_face_landmark.onnx`` (:class:`LandmarkModel`): 222 landmarks from a 128 x 128 BGR crop ``/ 255``; outputs
  ``landmark`` (2 x 222, normalised), ``euler`` (pitch, yaw in radians), ``prob``. :func:`align_face` refines the
  crop 3 times (each crop rotated upright and fitted to the previous landmarks).
* ``hello_3dmm.onnx`` (:class:`HeadPoseModel`): 1201 3DMM coefficients from a 224 RGB ``/ 255`` crop; only the
  head angles and the translation are used (see :mod:`.geometry`).
* ``hello_arkit_blendshape.onnx`` (:class:`BlendshapeModel`): 51 ARKit blendshapes from a 224 BGR ``/ 255`` crop.

:class:`FaceTracker` follows faces over a clip with the toolkit's per-region landmark smoothing, and
:func:`track_landmarks_222` runs the official two passes (detect + track, then re-align from each frame's box) and
keeps the largest face. Unlike the original, a frame without a face is never dropped silently: it is reported
(:class:`~..face.track.NoFaceError` names the frames and the input) or, on request, filled from the nearest frame
with a face.

Sessions use onnxruntime's CUDA provider when it is available (and not disabled), else the CPU, and are shared
between owners (:func:`...runtime.onnx.create_session`): a server that builds a toolkit per job holds one session per
model file, not one per job.

Offline fallback: :func:`approximate_head_pose` estimates the 3DMM-style head angles and translation from MediaPipe's
478 landmarks (the pack's :mod:`face` package) with ``cv2.solvePnP`` against a small canonical 3D face defined here.
It is an APPROXIMATION (different model, hand-made 3D points), clearly not what the official 3DMM computes.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from ...runtime.onnx import create_session
from . import geometry as geo

FAMILY = "hellomeme"
MODEL_FILE_IDS = {
    "detector": "hello_face_det",
    "landmarks": "hello_face_landmark",
    "threedmm": "hello_3dmm",
    "arkit": "hello_arkit_blendshape",
}

# ---- detector constants ----------------------------------------------------------------------------------------------
DET_INPUT_WIDTH, DET_INPUT_HEIGHT = 160, 272
DET_MEAN_BGR = (103.53, 116.28, 123.675)
DET_STD_BGR = (57.375, 57.12, 58.395)
DET_STRIDES = (8, 16, 32)
DET_REG_MAX = 7
DET_SCORE_THRESHOLD = 0.4
DET_NMS_IOU = 0.3
DET_TOP_CANDIDATES = 1000  # per stride, before NMS
DET_NMS_CANDIDATES = 200  # highest scores considered by the hard NMS

# ---- landmark / tracking constants -----------------------------------------------------------------------------------
LANDMARK_COUNT = 222
ALIGN_ITERATIONS = 3
TRACK_MIN_PROB = 0.0001
TRACK_MIN_FACE = 96  # px: faces whose landmark box is narrower or lower are dropped
TRACK_OVERLAP_IOU = 0.12
ARKIT_COUNT = 51


# ---- files ----------------------------------------------------------------------------------------------------------
def model_files(names: Sequence[str] = tuple(MODEL_FILE_IDS), store=None, download: bool = False) -> dict[str, Path]:
    """Paths of the official ONNX files ``names`` (keys of :data:`MODEL_FILE_IDS`) resolved through the model store
    (``ModelStore.default()`` when ``store`` is None). Raises ``MissingModelFiles`` listing what is missing."""
    from ...loaders.manifest import load_manifest
    from ...loaders.store import ModelStore

    unknown = [n for n in names if n not in MODEL_FILE_IDS]
    if unknown:
        raise KeyError(f"unknown face toolkit model(s) {unknown}; known: {', '.join(MODEL_FILE_IDS)}")
    manifest = load_manifest(FAMILY)
    files = [manifest.file(MODEL_FILE_IDS[n]) for n in names]
    found = (store or ModelStore.default()).ensure(files, download=download)
    return {n: Path(found[MODEL_FILE_IDS[n]]) for n in names}


class _OnnxModel:
    """Holds one session (or any object with ``run(output_names, feeds)`` and ``get_inputs()``)."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, device: Optional[str] = None):
        return cls(create_session(path, device))

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            return self.session.run(self.output_names, {self.input_name: tensor})


# ---- NanoDet face detector -------------------------------------------------------------------------------------------
def letterbox_matrix(width: int, height: int, dst_width: int = DET_INPUT_WIDTH,
                     dst_height: int = DET_INPUT_HEIGHT) -> np.ndarray:
    """3x3 float64 matrix scaling a ``width x height`` frame into ``dst_width x dst_height`` keeping its aspect ratio,
    centred (the letterbox of the detector input)."""
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -width / 2, -height / 2
    ratio = dst_height / height if width / height < dst_width / dst_height else dst_width / width
    scale = np.diag([ratio, ratio, 1.0])
    shift = np.eye(3)
    shift[0, 2], shift[1, 2] = 0.5 * dst_width, 0.5 * dst_height
    return shift @ scale @ centre


def detector_input(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tensor (1, 3, 272, 160) float32 normalised BGR, letterbox matrix 3x3)`` of one uint8 BGR frame."""
    h, w = image_bgr.shape[:2]
    m = letterbox_matrix(w, h)
    img = geo.warp_affine(image_bgr, m[:2], (DET_INPUT_WIDTH, DET_INPUT_HEIGHT))
    x = img.astype(np.float32) / 255
    mean = np.array(DET_MEAN_BGR, dtype=np.float32).reshape(1, 1, 3) / 255
    std = np.array(DET_STD_BGR, dtype=np.float32).reshape(1, 1, 3) / 255
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), m


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def box_area(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    wh = np.clip(hi - lo, 0.0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou_many(boxes: np.ndarray, box: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """IoU of ``(N, 4)`` boxes with one ``(1, 4)`` box (x0, y0, x1, y1)."""
    inter = box_area(np.maximum(boxes[..., :2], box[..., :2]), np.minimum(boxes[..., 2:], box[..., 2:]))
    a = box_area(boxes[..., :2], boxes[..., 2:])
    b = box_area(box[..., :2], box[..., 2:])
    return inter / (a + b - inter + eps)


def hard_nms(box_scores: np.ndarray, iou_threshold: float = DET_NMS_IOU,
             candidates: int = DET_NMS_CANDIDATES) -> np.ndarray:
    """Greedy NMS over ``(N, 5)`` rows ``x0, y0, x1, y1, score``: keep the best, drop boxes overlapping it by more
    than ``iou_threshold``, repeat (only the ``candidates`` best are considered). Returns the kept rows."""
    order = np.argsort(box_scores[:, -1])[-candidates:]
    kept = []
    while len(order) > 0:
        best = order[-1]
        kept.append(best)
        if len(order) == 1:
            break
        order = order[:-1]
        iou = box_iou_many(box_scores[order, :4], box_scores[best, :4][None])
        order = order[iou <= iou_threshold]
    return box_scores[kept, :]


def _map_boxes(boxes: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes through a 3x3 transform (their 4 corners' extent), clipped to the frame; float32."""
    n = len(boxes)
    pts = np.ones((n * 4, 3))
    pts[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    pts = pts @ matrix.T
    pts = (pts[:, :2] / pts[:, 2:3]).reshape(n, 8)
    xs, ys = pts[:, [0, 2, 4, 6]], pts[:, [1, 3, 5, 7]]
    out = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.float32)


def decode_detections(scores: Sequence[np.ndarray], box_dists: Sequence[np.ndarray], matrix: np.ndarray,
                      image_hw: tuple[int, int], score_threshold: float = DET_SCORE_THRESHOLD,
                      iou_threshold: float = DET_NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """NanoDet post-processing. ``scores[k]`` ``(cells, classes)`` (or ``(cells,)``), ``box_dists[k]``
    ``(cells, 4 * (reg_max + 1))`` for stride ``DET_STRIDES[k]`` (row-major cells of the 272 x 160 input; a cell's
    anchor is its top-left corner). Distances = expectation of the softmax distribution x stride.
    Returns ``(boxes (N, 4) int32 in frame pixels, scores (N,))``, best first per NMS."""
    all_boxes, all_scores = [], []
    bins = np.arange(DET_REG_MAX + 1)
    for stride, dist, score in zip(DET_STRIDES, box_dists, scores):
        score = score[:, None] if score.ndim == 1 else score
        hh, ww = np.meshgrid(np.arange(DET_INPUT_HEIGHT / stride), np.arange(DET_INPUT_WIDTH / stride), indexing="ij")
        rows, cols = hh.flatten() * stride, ww.flatten() * stride
        anchors = np.stack((cols, rows, cols, rows), axis=1)
        d = _softmax(dist.reshape(-1, DET_REG_MAX + 1), axis=1)
        d = (d * bins[None]).sum(axis=1).reshape(-1, 4) * stride
        top = np.argsort(score.max(axis=1))[::-1][:DET_TOP_CANDIDATES]
        all_boxes.append(anchors[top] + np.array([-1, -1, 1, 1]) * d[top])
        all_scores.append(score[top])
    boxes, confidences = np.concatenate(all_boxes, axis=0), np.concatenate(all_scores, axis=0)
    picked = []
    for c in range(confidences.shape[1]):
        probs = confidences[:, c]
        mask = probs > score_threshold
        if not mask.any():
            continue
        picked.append(hard_nms(np.concatenate([boxes[mask], probs[mask, None]], axis=1), iou_threshold))
    if not picked:
        return np.zeros((0, 4), np.int32), np.zeros((0,), np.float32)
    kept = np.concatenate(picked)
    h, w = image_hw
    kept[:, :4] = _map_boxes(kept[:, :4], np.linalg.inv(matrix), w, h)
    return kept[:, :4].astype(np.int32), kept[:, 4]


class FaceBoxDetector(_OnnxModel):
    """``hello_face_det.onnx``: ``detect(frame_bgr) -> (boxes (N, 4) int32, scores (N,))``."""

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor, m = detector_input(image_bgr)
        outs = self.run(tensor)
        scores = [np.squeeze(x) for x in outs[:3]]
        dists = [np.squeeze(x) for x in outs[3:]]
        return decode_detections(scores, dists, m, image_bgr.shape[:2])


# ---- 222 landmarks ----------------------------------------------------------------------------------------------------
def decode_landmark_outputs(landmark: np.ndarray, euler: np.ndarray, prob: np.ndarray,
                            size: int = geo.LANDMARK_INPUT_SIZE):
    """Raw outputs -> ``(points (222, 2) float32 crop pixels, euler (3,) float32 [pitch, yaw, roll], prob float)``.
    ``landmark`` holds all x then all y, normalised to the crop; roll is the eye-corner angle IN THE CROP."""
    pts = np.reshape(landmark[0], (2, -1)).transpose((1, 0)) * size
    roll = geo.eye_corner_radians(pts)
    eul = np.array([euler[0, 0], euler[0, 1], roll], dtype=np.float32)
    return pts, eul, float(np.ravel(prob)[0])


class LandmarkModel(_OnnxModel):
    """``hello_face_landmark.onnx``: ``predict(crop_bgr_128) -> (points, euler, prob)`` in crop pixels."""

    def predict(self, crop_bgr: np.ndarray):
        size = geo.LANDMARK_INPUT_SIZE
        if crop_bgr.shape[:2] != (size, size):
            raise ValueError(f"the landmark model takes {size}x{size} crops, got {crop_bgr.shape[1]}x{crop_bgr.shape[0]}")
        tensor = crop_bgr.transpose((2, 0, 1)).astype(np.float32)[np.newaxis] / 255.0
        landmark, euler, prob = self.run(tensor)[:3]
        return decode_landmark_outputs(landmark, euler, prob, size)


def _usable(points: np.ndarray) -> bool:
    """Finite landmarks with a non-empty extent (a crop can be fitted to them)."""
    return bool(np.isfinite(points).all()) and float(np.ptp(points, axis=0).max()) > 0


@dataclass
class Alignment:
    """Result of :func:`align_face`: ``points`` (222, 2) float32 frame pixels, ``euler`` (3,) radians
    [pitch, yaw, roll-in-last-crop], ``prob``, and the last crop's (2, 3) ``matrix``."""

    points: np.ndarray
    euler: np.ndarray
    prob: float
    matrix: np.ndarray


def align_face(model: LandmarkModel, image_bgr: np.ndarray, box=None, prev_points: Optional[np.ndarray] = None,
               iterations: int = ALIGN_ITERATIONS) -> Alignment:
    """222 landmarks of the face in ``box`` (x0, y0, x1, y1) or near ``prev_points`` (the previous frame's), refined
    ``iterations`` times: each pass crops 128 x 128 around the last landmarks, rotated by the last pass's
    in-crop roll (as the official code does), and maps the new landmarks back to the frame."""
    size, expand = geo.LANDMARK_INPUT_SIZE, geo.LANDMARK_EXPAND
    if prev_points is not None and not _usable(prev_points):
        raise ValueError("align_face: the previous landmarks are degenerate")
    if prev_points is not None:
        m = geo.landmark_warp(prev_points, geo.eye_corner_angle(prev_points), size, expand).matrix
    elif box is not None:
        m = geo.box_warp(box, 0, size, expand)
    else:
        raise ValueError("align_face needs a face box or the previous landmarks")
    pts, eul, prob = model.predict(geo.warp_affine(image_bgr, m, (size, size)))
    pts = geo.transform_points(pts, m, invert=True)
    for _ in range(iterations - 1):
        if not _usable(pts):  # collapsed landmarks (no face in the crop): stop, reported as improbable
            return Alignment(points=pts, euler=eul, prob=0.0, matrix=m)
        m = geo.landmark_warp(pts, np.rad2deg(eul[2]), size, expand).matrix
        pts, eul, prob = model.predict(geo.warp_affine(image_bgr, m, (size, size)))
        pts = geo.transform_points(pts, m, invert=True)
    return Alignment(points=pts, euler=eul, prob=prob, matrix=m)


# ---- per-region landmark smoothing ------------------------------------------------------------------------------------
def _smoothing_factor(t_e, cutoff):
    r = 2 * math.pi * cutoff * t_e
    return r / (r + 1)


class OneEuroFilter:
    """One-Euro-style filter of a point set: ``filter(x, x_prev, t_e, beta)`` with ``min_cutoff`` 1 and a derivative
    cutoff 1; ``t_e`` plays the role of the sampling period (the toolkit passes its adaptive speed there)."""

    def __init__(self, d_cutoff: float = 1.0):
        self.d_cutoff = float(d_cutoff)
        self.dx_prev = 0.0

    def __call__(self, x: np.ndarray, x_prev: Optional[np.ndarray], t_e: float = 1.0, min_cutoff: float = 1.0,
                 beta: float = 0.0) -> np.ndarray:
        if x_prev is None:
            return x
        if t_e == 0:  # limit t_e -> 0 (the original divides by zero there): keep the previous points
            return x_prev.copy()
        a_d = _smoothing_factor(t_e, self.d_cutoff)
        dx = (x - x_prev) / t_e
        dx_hat = a_d * dx + (1 - a_d) * self.dx_prev
        cutoff = min_cutoff + beta * np.abs(dx_hat)
        a = _smoothing_factor(t_e, cutoff)
        self.dx_prev = dx_hat
        return a * x + (1 - a) * x_prev


@dataclass(frozen=True)
class SmoothRegion:
    """One landmark region: its points, the points whose motion is measured, the "still" threshold below which the
    filter speed ramps from 0 to ``slow``, the "moving" threshold (0.02) above which it is ``fast``."""

    points: tuple
    measure: tuple
    still: float
    slow: float
    fast: float
    moving: float = 0.02


SMOOTH_REGIONS = (
    SmoothRegion(tuple(range(0, 33)), tuple(range(9, 24)), 0.005, 0.05, 0.3),  # contour (measured on the jaw)
    SmoothRegion(tuple(range(33, 48)), tuple(range(33, 48)), 0.003, 0.03, 0.7),  # nose
    SmoothRegion(tuple(range(48, 74)), tuple(range(48, 74)), 0.003, 0.02, 0.5),  # eyebrows
    SmoothRegion(tuple(range(74, 96)), tuple(range(74, 96)), 0.003, 0.03, 0.7),  # left eye
    SmoothRegion(tuple(range(96, 118)), tuple(range(96, 118)), 0.003, 0.03, 0.7),  # right eye
    SmoothRegion(tuple(range(118, 182)), tuple(range(118, 182)), 0.003, 0.05, 0.7),  # mouth
    SmoothRegion(tuple(range(182, 202)), tuple(range(182, 202)), 0.003, 0.03, 0.7),  # left pupil
    SmoothRegion(tuple(range(202, 222)), tuple(range(202, 222)), 0.003, 0.03, 0.7),  # right pupil
)


def region_speed(mean_motion, region: SmoothRegion):
    """Filter speed (used as both ``t_e`` and ``beta``) for a region's mean normalised motion."""
    if mean_motion < region.still:
        return region.slow * (mean_motion / region.still)
    if mean_motion < region.moving:
        ratio = (mean_motion - region.still) / (region.moving - region.still)
        return region.slow + (region.fast - region.slow) * ratio
    return region.fast


class LandmarkSmoother:
    """Temporal smoothing of one tracked face's 222 landmarks, region by region (:data:`SMOOTH_REGIONS`): the
    slower a region moves (mean point motion / face size), the more it is held back."""

    def __init__(self):
        self.filters = [OneEuroFilter() for _ in SMOOTH_REGIONS]
        self.prev: Optional[np.ndarray] = None

    def smooth(self, points: np.ndarray, face_size: float) -> np.ndarray:
        if self.prev is None:
            self.prev = points.copy()
            return points
        motion = np.sqrt(np.square(points[:, 0] - self.prev[:, 0]) + np.square(points[:, 1] - self.prev[:, 1]))
        motion = motion / face_size
        out = points.copy()
        for region, filt in zip(SMOOTH_REGIONS, self.filters):
            speed = region_speed(np.mean(motion[list(region.measure)]), region)
            idx = list(region.points)
            out[idx] = filt(points[idx], self.prev[idx], t_e=speed, beta=speed)
        self.prev = out
        return out


# ---- tracking ---------------------------------------------------------------------------------------------------------
def _box_of(points: np.ndarray) -> list:
    return [np.min(points[:, 0]), np.min(points[:, 1]), np.max(points[:, 0]), np.max(points[:, 1])]


def _box_diagonal(box) -> float:
    return np.sqrt(np.square(box[2] - box[0]) + np.square(box[3] - box[1]))


def _overlap(a, b) -> float:
    """IoU of two boxes (0 when they do not intersect)."""
    inter = abs(max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0))
    if inter == 0:
        return 0
    area_a = abs((a[2] - a[0]) * (a[3] - a[1]))
    area_b = abs((b[2] - b[0]) * (b[3] - b[1]))
    return inter / float(area_a + area_b - inter)


def _area(box) -> float:
    return (box[3] - box[1]) * (box[2] - box[0])


@dataclass
class TrackedFace:
    """A face followed by :class:`FaceTracker`: ``box`` (its landmarks' extent once aligned, else the detector's),
    smoothed ``points`` (222, 2) or None before the first alignment, ``face_size`` (normaliser of the smoothing),
    ``prob`` and the last ``euler`` angles (radians)."""

    box: object
    face_size: float
    smoother: LandmarkSmoother = field(default_factory=LandmarkSmoother)
    points: Optional[np.ndarray] = None
    prob: float = 0.0
    euler: Optional[np.ndarray] = None

    @staticmethod
    def from_box(box) -> "TrackedFace":
        return TrackedFace(box=box, face_size=_box_diagonal(box))


class FaceTracker:
    """The toolkit's multi-face tracker (``HelloCameraDemo``): new detections are added every frame, every face is
    re-aligned (from its previous landmarks when it has them), smoothed, and faces that are unlikely, smaller than
    96 px or overlapping a larger face (IoU > 0.12) are dropped."""

    def __init__(self, detector: FaceBoxDetector, landmarks: LandmarkModel):
        self.detector = detector
        self.landmarks = landmarks
        self.faces: list[TrackedFace] = []

    def reset(self) -> None:
        self.faces = []

    def step(self, image_bgr: np.ndarray, pre_box=None) -> list[TrackedFace]:
        """Track one frame. ``pre_box`` replaces the detector when no face is being tracked."""
        if not self.faces and pre_box is not None:
            boxes = [pre_box]
        else:
            boxes = list(self.detector.detect(image_bgr)[0])
        self.faces.extend(TrackedFace.from_box(b) for b in boxes)
        dropped: list[int] = []
        for i, face in enumerate(self.faces):
            if face.points is not None:
                res = align_face(self.landmarks, image_bgr, prev_points=face.points)
            else:
                res = align_face(self.landmarks, image_bgr, box=face.box)
            if res.prob < TRACK_MIN_PROB:
                if i not in dropped:
                    dropped.append(i)
                continue
            pts = face.smoother.smooth(res.points, face.face_size)
            face.points = pts
            box = _box_of(pts)
            size = np.linalg.norm(pts[0] - pts[32])
            if box[2] - box[0] < TRACK_MIN_FACE or box[3] - box[1] < TRACK_MIN_FACE:
                if i not in dropped:
                    dropped.append(i)
            pitch, yaw = np.rad2deg(res.euler[0]), np.rad2deg(res.euler[1])
            size *= (1.0 + (abs(pitch) + abs(yaw) * 0.6) / 18.0)
            face.box, face.face_size, face.prob, face.euler = box, size, res.prob, res.euler
        if len(self.faces) > 1:  # overlap suppression, in the original's order
            for i, a in enumerate(self.faces):
                if i in dropped:
                    continue
                for j, b in enumerate(self.faces):
                    if j in dropped or i == j:
                        continue
                    if _overlap(a.box, b.box) > TRACK_OVERLAP_IOU:
                        loser = i if _area(a.box) - _area(b.box) < 0 else j
                        if loser not in dropped:
                            dropped.append(loser)
        self.faces = [f for k, f in enumerate(self.faces) if k not in dropped]
        return self.faces


def _largest(faces: list[TrackedFace]) -> TrackedFace:
    return sorted(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))[-1]


def track_landmarks_222(frames_bgr: Sequence[np.ndarray], detector: FaceBoxDetector, landmarks: LandmarkModel,
                        progress: Optional[Callable[[int], None]] = None) -> list[Optional[np.ndarray]]:
    """The official two-pass landmarking of a clip (largest face). Pass 1 tracks from detections and keeps each
    frame's face box; pass 2 tracks again over the frames that had a face, re-aligning from those boxes. Returns
    one ``(222, 2)`` float32 array per frame, None where no face was found (never dropped)."""
    tracker = FaceTracker(detector, landmarks)
    boxes: dict[int, object] = {}
    for i, frame in enumerate(frames_bgr):
        faces = tracker.step(frame)
        if faces:
            boxes[i] = _largest(faces).box
        if progress is not None:
            progress(1)
    tracker.reset()
    out: list[Optional[np.ndarray]] = [None] * len(frames_bgr)
    for i in sorted(boxes):
        faces = tracker.step(frames_bgr[i], pre_box=boxes[i])
        if faces:
            out[i] = _largest(faces).points
        if progress is not None:
            progress(1)
    tracker.reset()
    return out


def resolve_missing(points: Sequence[Optional[np.ndarray]], input_name: str = "images",
                    on_missing: str = "error") -> tuple[np.ndarray, dict[int, int]]:
    """Stack per-frame landmarks, handling frames without a face: ``on_missing="error"`` raises
    :class:`~..face.track.NoFaceError` naming them and ``input_name``; ``"fill_nearest"`` copies the nearest frame
    with a face (the earlier one on a tie). Returns ``(landmarks (F, N, 2), {filled frame: source frame})``."""
    from ...face.track import NoFaceError

    if on_missing not in ("error", "fill_nearest"):
        raise ValueError(f"on_missing must be 'error' or 'fill_nearest', got {on_missing!r}")
    missing = [i for i, p in enumerate(points) if p is None]
    have = np.array([i for i, p in enumerate(points) if p is not None])
    if missing and (on_missing == "error" or have.size == 0):
        hint = ("set 'on_missing' to 'fill_nearest' to repeat the nearest frame with a face, or trim those frames "
                "(the HelloMeme face toolkit needs a clearly visible face at least 96 px wide)") if have.size else \
            "use images where a face is clearly visible and at least 96 px wide"
        raise NoFaceError(missing, len(points), input_name, hint=hint)
    filled: dict[int, int] = {}
    out = list(points)
    for i in missing:
        src = int(have[np.argmin(np.abs(have - i) * 2 + (have > i))])
        out[i] = points[src].copy()
        filled[i] = src
    return np.stack(out, axis=0), filled


# ---- 3DMM head pose and ARKit blendshapes --------------------------------------------------------------------------------
class HeadPoseModel(_OnnxModel):
    """``hello_3dmm.onnx``: ``pose(frame_bgr, landmarks222) -> (angles (1, 3), translation (1, 3))`` in the frame's
    camera (see :func:`.geometry.threedmm_head_pose`)."""

    def coefficients(self, crop_rgb: np.ndarray) -> np.ndarray:
        tensor = (crop_rgb.astype(np.float32) / 255.0).transpose((2, 0, 1))[np.newaxis].copy()
        return self.run(tensor)[0]

    def pose(self, image_bgr: np.ndarray, landmarks: np.ndarray):
        crop, warp = geo.threedmm_input(image_bgr, landmarks)
        return geo.threedmm_head_pose(self.coefficients(crop), warp, image_bgr.shape[:2])


class BlendshapeModel(_OnnxModel):
    """``hello_arkit_blendshape.onnx``: ``coefficients(frame_bgr, landmarks222) -> (51,) float32``."""

    def coefficients(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        crop, _ = geo.arkit_input(image_bgr, landmarks)
        tensor = crop.transpose((2, 0, 1)).astype(np.float32)[np.newaxis] / 255.0
        return np.asarray(self.run(tensor)[0][0], np.float32)


class HelloFaceToolkit:
    """The four official ONNX models, created lazily from the model store (or explicit ``paths``).

    ``HelloFaceToolkit(store=None, download=False, device=None, paths=None)``; ``paths`` maps
    ``detector``/``landmarks``/``threedmm``/``arkit`` to ONNX files and bypasses the store.
    """

    def __init__(self, store=None, download: bool = False, device: Optional[str] = None,
                 paths: Optional[dict] = None):
        self.store, self.download, self.device = store, download, device
        self.paths = {k: Path(v) for k, v in (paths or {}).items()}
        self._models: dict[str, _OnnxModel] = {}
        self._lock = threading.Lock()

    _CLASSES = {"detector": FaceBoxDetector, "landmarks": LandmarkModel, "threedmm": HeadPoseModel,
                "arkit": BlendshapeModel}

    def _model(self, name: str):
        with self._lock:
            if name not in self._models:
                path = self.paths.get(name) or model_files([name], self.store, self.download)[name]
                self._models[name] = self._CLASSES[name].from_file(path, self.device)
            return self._models[name]

    @property
    def detector(self) -> FaceBoxDetector:
        return self._model("detector")

    @property
    def landmarks(self) -> LandmarkModel:
        return self._model("landmarks")

    @property
    def threedmm(self) -> HeadPoseModel:
        return self._model("threedmm")

    @property
    def arkit(self) -> BlendshapeModel:
        return self._model("arkit")

    def landmarks_222(self, frames_bgr: Sequence[np.ndarray], input_name: str = "images", on_missing: str = "error",
                      progress=None) -> tuple[np.ndarray, dict[int, int]]:
        """``(landmarks (F, 222, 2) float32, filled frames)`` of the largest face (see :func:`resolve_missing`)."""
        pts = track_landmarks_222(frames_bgr, self.detector, self.landmarks, progress)
        return resolve_missing(pts, input_name, on_missing)

    def head_poses(self, frames_bgr: Sequence[np.ndarray], landmarks: np.ndarray):
        """Lists of per-frame ``(1, 3)`` angles and translations."""
        angles, trans = [], []
        for frame, lm in zip(frames_bgr, landmarks):
            a, t = self.threedmm.pose(frame, lm)
            angles.append(a)
            trans.append(t)
        return angles, trans

    def blendshapes(self, frames_bgr: Sequence[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
        """``(F, 51)`` float32 ARKit coefficients."""
        return np.stack([self.arkit.coefficients(f, lm) for f, lm in zip(frames_bgr, landmarks)], axis=0)


# ---- approximate head pose from MediaPipe landmarks ----------------------------------------------------------------------
# A small canonical face (metres; x to the image right, y down, z away from the camera) at MediaPipe mesh indices.
# Hand-made from average facial proportions: good enough for the head's rotation and rough position, nothing more.
APPROX_FACE_POINTS_3D = {
    1: (0.0, 0.030, -0.045),     # nose tip
    168: (0.0, -0.012, -0.020),  # between the eyes
    33: (-0.045, 0.0, 0.0),      # right eye, outer corner (image left)
    133: (-0.015, 0.0, -0.008),  # right eye, inner corner
    362: (0.015, 0.0, -0.008),   # left eye, inner corner
    263: (0.045, 0.0, 0.0),      # left eye, outer corner (image right)
    61: (-0.026, 0.066, -0.018),  # mouth corners
    291: (0.026, 0.066, -0.018),
    152: (0.0, 0.110, -0.010),   # chin
    10: (0.0, -0.065, -0.012),   # forehead
    234: (-0.072, 0.015, 0.045),  # face sides at the ears
    454: (0.072, 0.015, 0.045),
}
# The 222-point crop uses the jaw, cheeks and brows; these MediaPipe points span roughly the same extent.
APPROX_EXTENT_POINTS = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288,
                        361, 323, 454, 356, 46, 53, 52, 65, 55, 70, 63, 105, 66, 107, 276, 283, 282, 295, 285, 300,
                        293, 334, 296, 336)
# MediaPipe stand-ins of the PD-FGC points [182, 202, 36, 149, 133]: iris centres (image left, right), nose tip,
# mouth corners (image left, right).
APPROX_PDFGC_POINTS = (468, 473, 1, 61, 291)


def euler_xyz_from_matrix(rot: np.ndarray) -> np.ndarray:
    """Angles ``(x, y, z)`` with ``rot = Rz(z) Ry(y) Rx(x)`` (column vectors), the 3DMM's convention."""
    x = math.atan2(rot[2, 1], rot[2, 2])
    y = math.atan2(-rot[2, 0], math.hypot(rot[2, 1], rot[2, 2]))
    z = math.atan2(rot[1, 0], rot[0, 0])
    return np.array([x, y, z])


def approximate_head_pose(landmarks: np.ndarray, width: int, height: int,
                          focal: float = geo.THREEDMM_USED_FOCAL) -> tuple[np.ndarray, np.ndarray]:
    """APPROXIMATE head pose of one face from MediaPipe's 478 landmarks ``(478, 2|3)`` pixels of a ``width x height``
    image, in the 3DMM's conventions: ``(angles (1, 3) float32 radians (x, y, z), translation (1, 3) float32)``.

    ``cv2.solvePnP`` fits :data:`APPROX_FACE_POINTS_3D` with a pinhole camera of focal ``focal`` (the 3DMM's
    full-image focal) centred on the image; the result is converted from OpenCV's camera (y down, z forward) to the
    3DMM's (y up, z towards the viewer). Not the official model: use it when ``hello_3dmm.onnx`` is unavailable.
    """
    lm = np.asarray(landmarks, np.float64)
    idx = list(APPROX_FACE_POINTS_3D)
    obj = np.array([APPROX_FACE_POINTS_3D[i] for i in idx], np.float64)
    img = lm[idx, :2]
    cam = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise RuntimeError("approximate head pose: solvePnP failed")
    rot_cv, _ = cv2.Rodrigues(rvec)
    flip = np.diag([1.0, -1.0, -1.0])
    rot = flip @ rot_cv @ flip
    trans = flip @ tvec.reshape(3)
    return euler_xyz_from_matrix(rot)[None].astype(np.float32), trans[None].astype(np.float32)
