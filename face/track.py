"""Per-frame face detections of one chosen face over a clip (:class:`FaceTrack`) and the no-face error."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ..media.errors import PlainName

LANDMARK_COUNT = 478  # MediaPipe face mesh with refined eyes and irises (468 mesh points + 10 iris points)

# A few useful indices into the 478-point mesh.
NOSE_TIP = 1
FOREHEAD = 10
CHIN = 152
MOUTH_UPPER, MOUTH_LOWER = 13, 14
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133  # subject's right eye (left side of a frontal image)
LEFT_EYE_OUTER, LEFT_EYE_INNER = 263, 362
RIGHT_IRIS, LEFT_IRIS = 468, 473  # iris centres (present with 478 points)


@dataclass
class Face:
    """One detected face. ``landmarks`` is ``[478, 3]`` float32 in source pixels (x, y; z in pixels at the x scale,
    smaller is closer to the camera); ``box`` is ``[4]`` float32 ``x0, y0, x1, y1`` (the landmarks' extent);
    ``score`` is the detector's confidence, NaN when the backend gives none."""

    landmarks: np.ndarray
    box: np.ndarray
    score: float = float("nan")

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @staticmethod
    def from_landmarks(landmarks: np.ndarray, score: float = float("nan")) -> "Face":
        landmarks = np.asarray(landmarks, np.float32)
        xy = landmarks[:, :2]
        box = np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()], np.float32)
        return Face(landmarks=landmarks, box=box, score=float(score))


class NoFaceError(PlainName, ValueError):
    """The requested face was not found in some frames. ``frames`` lists their batch indices (from 0)."""

    def __init__(self, frames: list[int], total: int, input_name: str = "images", face_index: int = 0,
                 hint: str = ""):
        self.frames = list(frames)
        self.total = total
        what = "no face found" if face_index == 0 else f"face #{face_index} (0 = largest) not found"
        if len(self.frames) == total:
            where = f"in any of the {total} frame(s)" if total > 1 else "in the only frame"
            msg = f"{what} {where} of input '{input_name}'"
            fix = hint or ("use images where a face is clearly visible and not too small, lower 'min_confidence' on "
                           "the Face Detector node, or try the other detector backend")
        else:
            if len(self.frames) == 1:
                where = f"in frame {self.frames[0]} of {total}"
            else:
                where = f"in {len(self.frames)} of {total} frames ({format_ranges(self.frames)})"
            msg = f"{what} {where} of input '{input_name}' (frame numbers are batch indices from 0)"
            fix = hint or ("set 'on_missing' to 'fill_nearest' to reuse the nearest frame with a face, trim those "
                           "frames, or lower 'min_confidence' on the Face Detector node")
        super().__init__(f"{msg}; {fix}.")


def format_ranges(indices: list[int], limit: int = 12) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (at most ``limit`` ranges, then "...")."""
    parts: list[str] = []
    idx = sorted(indices)
    start = prev = None
    for i in idx + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = i
    if len(parts) > limit:
        parts = parts[:limit] + ["..."]
    return ", ".join(parts)


@dataclass
class FaceTrack:
    """One face followed over ``num_frames`` frames of size ``height`` x ``width``.

    ``landmarks[i]`` is ``[478, 3]`` float32 in source pixels (x, y, z) or None when frame ``i`` has no face;
    ``boxes`` is ``[N, 4]`` float32 ``x0, y0, x1, y1`` (NaN rows for missing frames); ``scores`` is ``[N]`` (NaN when
    unknown); ``face_counts`` is ``[N]`` int, the number of faces seen per frame; ``filled`` maps each frame whose
    landmarks were copied from another frame to that frame.
    """

    num_frames: int
    height: int
    width: int
    landmarks: list
    boxes: np.ndarray
    scores: np.ndarray
    face_counts: np.ndarray
    face_index: int = 0
    backend: str = ""
    filled: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.num_frames

    @property
    def missing(self) -> list[int]:
        return [i for i, lm in enumerate(self.landmarks) if lm is None]

    @property
    def complete(self) -> bool:
        return not self.missing

    def points(self, i: int) -> Optional[np.ndarray]:
        """Landmarks of frame ``i`` as ``[478, 2]`` (x, y) pixels, or None."""
        lm = self.landmarks[i]
        return None if lm is None else lm[:, :2]

    def stacked(self) -> np.ndarray:
        """All landmarks as ``[N, 478, 3]`` float32; raises :class:`NoFaceError` if a frame has none."""
        self.require_all()
        return np.stack(self.landmarks).astype(np.float32)

    def require_all(self, input_name: str = "images") -> None:
        if self.missing:
            raise NoFaceError(self.missing, self.num_frames, input_name, self.face_index)

    def fill_nearest(self, input_name: str = "images") -> "FaceTrack":
        """A copy where each frame without a face takes the landmarks of the nearest frame with one (the earlier
        frame on a tie); ``filled`` records which. Raises :class:`NoFaceError` when no frame has a face."""
        missing = self.missing
        if not missing:
            return self
        have = np.array([i for i in range(self.num_frames) if self.landmarks[i] is not None])
        if have.size == 0:
            raise NoFaceError(missing, self.num_frames, input_name, self.face_index,
                              hint="filling needs at least one frame with a face; use images where a face is clearly "
                                   "visible, or lower 'min_confidence' on the Face Detector node")
        landmarks = list(self.landmarks)
        boxes, scores = self.boxes.copy(), self.scores.copy()
        filled = dict(self.filled)
        for i in missing:
            src = int(have[np.argmin(np.abs(have - i) * 2 + (have > i))])  # nearest; earlier wins a tie
            landmarks[i] = self.landmarks[src].copy()
            boxes[i], scores[i] = self.boxes[src], self.scores[src]
            filled[i] = src
        return replace(self, landmarks=landmarks, boxes=boxes, scores=scores, filled=filled)

    def select(self, indices) -> "FaceTrack":
        """The track restricted to frames ``indices`` (a list or slice)."""
        idx = list(range(self.num_frames))[indices] if isinstance(indices, slice) else [int(i) for i in indices]
        pos = {old: new for new, old in enumerate(idx)}
        return replace(self, num_frames=len(idx), landmarks=[self.landmarks[i] for i in idx], boxes=self.boxes[idx],
                       scores=self.scores[idx], face_counts=self.face_counts[idx],
                       filled={pos[k]: pos.get(v, -1) for k, v in self.filled.items() if k in pos})

    def summary(self) -> str:
        found = self.num_frames - len(self.missing)
        s = f"{found}/{self.num_frames} frames with a face ({self.width}x{self.height}, backend {self.backend})"
        if self.filled:
            s += f"; filled from nearest: {format_ranges(sorted(self.filled))}"
        return s

    def to_dict(self) -> dict:
        """JSON-friendly form (lists of floats; None for missing frames)."""
        return {
            "num_frames": self.num_frames, "height": self.height, "width": self.width,
            "face_index": self.face_index, "backend": self.backend,
            "landmarks": [None if lm is None else lm.tolist() for lm in self.landmarks],
            "boxes": [None if np.isnan(b).any() else b.tolist() for b in self.boxes],
            "scores": [None if np.isnan(s) else float(s) for s in self.scores],
            "face_counts": self.face_counts.tolist(),
            "filled": {str(k): v for k, v in self.filled.items()},
        }

    @staticmethod
    def from_dict(d: dict) -> "FaceTrack":
        n = int(d["num_frames"])
        return FaceTrack(
            num_frames=n, height=int(d["height"]), width=int(d["width"]),
            landmarks=[None if lm is None else np.asarray(lm, np.float32) for lm in d["landmarks"]],
            boxes=np.array([[np.nan] * 4 if b is None else b for b in d["boxes"]], np.float32).reshape(n, 4),
            scores=np.array([np.nan if s is None else s for s in d["scores"]], np.float32),
            face_counts=np.asarray(d.get("face_counts", [0] * n), np.int32),
            face_index=int(d.get("face_index", 0)), backend=d.get("backend", ""),
            filled={int(k): int(v) for k, v in d.get("filled", {}).items()},
        )

    @staticmethod
    def from_faces(faces: list, height: int, width: int, face_counts=None, face_index: int = 0,
                   backend: str = "") -> "FaceTrack":
        """Build a track from one :class:`Face` (or None) per frame."""
        n = len(faces)
        boxes = np.full((n, 4), np.nan, np.float32)
        scores = np.full((n,), np.nan, np.float32)
        for i, f in enumerate(faces):
            if f is not None:
                boxes[i], scores[i] = f.box, f.score
        counts = np.asarray(face_counts if face_counts is not None else [int(f is not None) for f in faces], np.int32)
        return FaceTrack(num_frames=n, height=int(height), width=int(width),
                         landmarks=[None if f is None else f.landmarks for f in faces], boxes=boxes, scores=scores,
                         face_counts=counts, face_index=face_index, backend=backend)
