"""Face detection and 478-point landmarks with MediaPipe, behind one :class:`FaceDetector`.

Two backends:

* ``"bundled"``: the legacy ``mediapipe.solutions`` graphs whose models ship inside mediapipe wheels up to 0.10.21
  (no download). Two stages: the full-range face detector (faces near and far) gives boxes and scores, then the face
  mesh (``refine_landmarks=True``, 478 points) runs on a square crop around each box, so small faces in large frames
  get the same landmark quality as close-ups. If the detector finds nothing, the mesh runs on the whole frame.
* ``"task"``: the MediaPipe Tasks ``FaceLandmarker`` with ``face_landmarker.task`` (manifest ``face``, file
  ``face_landmarker``), for wheels that carry no models. The file is resolved through :class:`ModelStore`.

``"auto"`` uses the task file when it is present, else the bundled models, else the task file (downloaded when
``download`` is on, otherwise the store's missing-file error). MediaPipe is imported lazily, on first use.
"""
from __future__ import annotations

import math
import threading
import zipfile
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from .constants import BACKENDS, ON_MISSING
from .frames import Frames, as_batch, frame_size, frame_uint8
from .track import Face, FaceTrack, NoFaceError

TASK_FAMILY, TASK_FILE_ID = "face", "face_landmarker"

_MESH_CROP = 384          # side of the square crop the bundled mesh runs on (the face fills about half of it)
_MESH_CROP_SCALE = 2.0    # crop side / largest side of the detector's box
_DEDUPE_IOU = 0.5


def _import_mediapipe():
    try:
        import mediapipe as mp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("face detection needs the 'mediapipe' package: pip install mediapipe "
                          f"(in ComfyUI's Python environment). Import failed: {e}") from e
    return mp


def bundled_available() -> bool:
    """True when the installed mediapipe carries the legacy face models (``mediapipe.solutions``, <= 0.10.21)."""
    try:
        mp = _import_mediapipe()
        solutions = getattr(mp, "solutions", None)
        return solutions is not None and hasattr(solutions, "face_mesh") and hasattr(solutions, "face_detection")
    except Exception:
        return False


def task_model_file():
    """The manifest entry of ``face_landmarker.task``."""
    from ..loaders.manifest import load_manifest

    return load_manifest(TASK_FAMILY).file(TASK_FILE_ID)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``x0, y0, x1, y1`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _dedupe(faces: list[Face]) -> list[Face]:
    """Drop faces overlapping a better-scored one (IoU > 0.5); result sorted by area, largest first."""
    order = sorted(faces, key=lambda f: (-(f.score if math.isfinite(f.score) else -1.0), -f.area))
    kept: list[Face] = []
    for f in order:
        if all(box_iou(f.box, k.box) <= _DEDUPE_IOU for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: -f.area)


def _landmarks_array(landmarks, scale_x: float, scale_y: float, off_x: float = 0.0, off_y: float = 0.0) -> np.ndarray:
    """MediaPipe normalised landmarks -> ``[K, 3]`` float32 pixels (z scaled like x)."""
    a = np.array([(p.x, p.y, p.z) for p in landmarks], np.float32)
    a[:, 0] = a[:, 0] * scale_x + off_x
    a[:, 1] = a[:, 1] * scale_y + off_y
    a[:, 2] = a[:, 2] * scale_x
    return a


class _BundledBackend:
    name = "bundled"

    def __init__(self, max_faces: int, min_confidence: float):
        mp = _import_mediapipe()
        if not bundled_available():
            raise RuntimeError(f"the installed mediapipe {getattr(mp, '__version__', '?')} carries no bundled face "
                               "models (they were removed after 0.10.21); use the 'task' backend "
                               "(face_landmarker.task, downloaded by the Face Detector node when 'download' is on)")
        self.max_faces = max_faces
        self.detector = mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                                   min_detection_confidence=min_confidence)
        self.crop_mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2,
                                                         refine_landmarks=True, min_detection_confidence=0.3)
        self.full_mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                                         refine_landmarks=True,
                                                         min_detection_confidence=min_confidence)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        faces: list[Face] = []
        result = self.detector.process(rgb)
        for det in (result.detections or [])[: 2 * self.max_faces]:
            rb = det.location_data.relative_bounding_box
            box = np.array([rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h])
            face = self._mesh_in_box(rgb, box, float(det.score[0]) if det.score else float("nan"))
            if face is not None:
                faces.append(face)
        if not faces:
            result = self.full_mesh.process(rgb)
            for lms in result.multi_face_landmarks or []:
                faces.append(Face.from_landmarks(_landmarks_array(lms.landmark, w, h)))
        return _dedupe(faces)[: self.max_faces]

    def _mesh_in_box(self, rgb: np.ndarray, box: np.ndarray, score: float) -> Optional[Face]:
        """Run the mesh on a square crop around ``box`` (padded with black outside the frame); map back to pixels."""
        h, w = rgb.shape[:2]
        side = int(round(max(box[2] - box[0], box[3] - box[1]) * _MESH_CROP_SCALE))
        if side < 8:
            return None
        x0 = int(round((box[0] + box[2]) / 2 - side / 2))
        y0 = int(round((box[1] + box[3]) / 2 - side / 2))
        crop = np.zeros((side, side, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if side > _MESH_CROP else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (_MESH_CROP, _MESH_CROP), interpolation=interp)
        result = self.crop_mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        k = side / _MESH_CROP
        cands = [_landmarks_array(lms.landmark, _MESH_CROP * k, _MESH_CROP * k, x0, y0)
                 for lms in result.multi_face_landmarks]
        # the face nearest the detector's box centre
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        best = min(cands, key=lambda a: (a[:, 0].mean() - cx) ** 2 + (a[:, 1].mean() - cy) ** 2)
        face = Face.from_landmarks(best, score)
        fb = face.box
        if not (fb[0] <= cx <= fb[2] and fb[1] <= cy <= fb[3]):
            return None  # the mesh found some other face in the crop
        return face

    def close(self) -> None:
        for g in (self.detector, self.crop_mesh, self.full_mesh):
            try:
                g.close()
            except Exception:
                pass


class _TaskBackend:
    name = "task"

    def __init__(self, path: Path, max_faces: int, min_confidence: float):
        mp = _import_mediapipe()
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self._mp = mp
        data = Path(path).read_bytes()  # a buffer, not a path: works with any characters in the path
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=data), running_mode=vision.RunningMode.IMAGE,
            num_faces=max_faces, min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence)
        self.landmarker = vision.FaceLandmarker.create_from_options(options)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        result = self.landmarker.detect(image)
        faces = [Face.from_landmarks(_landmarks_array(lms, w, h)) for lms in result.face_landmarks or []]
        return _dedupe(faces)

    def close(self) -> None:
        try:
            self.landmarker.close()
        except Exception:
            pass


class FaceDetector:
    """MediaPipe face detector and landmarker.

    ``FaceDetector(backend="auto", max_faces=4, min_confidence=0.5, store=None, download=False, task_path=None)``

    * ``backend``: "auto", "bundled" or "task" (see the module docstring).
    * ``store``: the :class:`~loaders.store.ModelStore` that resolves ``face_landmarker.task`` (default:
      ``ModelStore.default()``); ``task_path`` bypasses the store.
    * ``download``: let the store fetch the task file when it is needed and missing.

    The MediaPipe graphs are built on first use (:meth:`prepare`) and reused; calls are serialised with a lock.
    """

    def __init__(self, backend: str = "auto", max_faces: int = 4, min_confidence: float = 0.5, store=None,
                 download: bool = False, task_path: str | Path | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown face detector backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if not 1 <= int(max_faces) <= 64:
            raise ValueError(f"max_faces must be between 1 and 64, got {max_faces}")
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        self.backend = backend
        self.max_faces = int(max_faces)
        self.min_confidence = float(min_confidence)
        self.store = store
        self.download = download
        self.task_path = Path(task_path) if task_path is not None else None
        self._impl = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        active = self._impl.name if self._impl is not None else "not loaded"
        return (f"FaceDetector(backend={self.backend!r} [{active}], max_faces={self.max_faces}, "
                f"min_confidence={self.min_confidence})")

    # ---- backend resolution -----------------------------------------------------------------------------------------
    def _store(self):
        if self.store is None:
            from ..loaders.store import ModelStore

            self.store = ModelStore.default()
        return self.store

    def _task_file(self, download: bool) -> Path:
        if self.task_path is not None:
            if not self.task_path.is_file():
                raise FileNotFoundError(f"face landmarker task file not found: '{self.task_path}'")
            path = self.task_path
        else:
            f = task_model_file()
            path = self._store().ensure([f], download=download)[f.id]
        if not zipfile.is_zipfile(path):
            from ..loaders.store import CorruptModelFile

            raise CorruptModelFile(None if self.task_path else task_model_file(), Path(path),
                                   "a .task file is a zip bundle, this one is not")
        return Path(path)

    def resolved_backend(self) -> str:
        """The backend :meth:`prepare` will build, "bundled" or "task" (nothing is loaded or downloaded here)."""
        if self.backend == "bundled":
            return "bundled"
        if self.backend == "task":
            return "task"
        if self.task_path is not None or self._store().locate(task_model_file()) is not None:
            return "task"
        return "bundled" if bundled_available() else "task"

    def prepare(self) -> "FaceDetector":
        """Build the MediaPipe graphs now (downloads the task file if needed and allowed). Returns ``self``."""
        with self._lock:
            if self._impl is None:
                kind = self.resolved_backend()
                if kind == "bundled":
                    self._impl = _BundledBackend(self.max_faces, self.min_confidence)
                else:
                    path = self._task_file(download=self.download)
                    self._impl = _TaskBackend(path, self.max_faces, self.min_confidence)
        return self

    @property
    def active_backend(self) -> str:
        return self.prepare()._impl.name

    def close(self) -> None:
        with self._lock:
            if self._impl is not None:
                self._impl.close()
                self._impl = None

    def __getstate__(self):  # picklable/copyable: graphs are rebuilt on demand
        state = dict(self.__dict__)
        state["_impl"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- detection --------------------------------------------------------------------------------------------------
    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in one frame (``[H, W, 3]`` uint8 RGB, or float 0..1), largest first."""
        self.prepare()
        rgb = frame_uint8([frame], 0)
        with self._lock:
            return self._impl.detect(rgb)

    def track(self, images: Frames, face_index: int = 0, on_missing: str = "error", input_name: str = "images",
              follow: bool = True, progress: Optional[Callable[[int], None]] = None) -> FaceTrack:
        """Landmarks of one face in every frame of ``images`` (IMAGE ``[B, H, W, 3]``) -> :class:`FaceTrack`.

        ``face_index`` picks a face by area (0 = largest). With ``follow`` (for videos), once a face is chosen, later
        frames take the face overlapping the previous choice most (IoU > 0.3), so two similar faces do not swap; the
        area rank is used again when the overlap is lost. ``on_missing``: "error" raises :class:`NoFaceError` naming
        the frames without the face; "fill_nearest" copies the nearest detected frame (recorded in ``filled``).
        ``progress(n)`` is called after each frame (it may raise to cancel).
        """
        if on_missing not in ON_MISSING:
            raise ValueError(f"unknown on_missing {on_missing!r}: use one of {', '.join(ON_MISSING)}")
        if face_index < 0:
            raise ValueError(f"face_index must be >= 0 (0 = largest face), got {face_index}")
        if face_index >= self.max_faces:
            raise ValueError(f"face_index {face_index} needs at least {face_index + 1} faces per frame but the "
                             f"detector looks for at most {self.max_faces}; raise 'max_faces' on the Face Detector "
                             "node")
        images = as_batch(images, input_name)
        h, w = frame_size(images)
        self.prepare()
        chosen: list[Optional[Face]] = []
        counts: list[int] = []
        prev: Optional[Face] = None
        for i in range(len(images)):
            rgb = frame_uint8(images, i)
            if rgb.shape[:2] != (h, w):
                raise ValueError(f"input '{input_name}': frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 is "
                                 f"{w}x{h}; all frames of a batch must have the same size")
            with self._lock:
                faces = self._impl.detect(rgb)
            counts.append(len(faces))
            pick = None
            if follow and prev is not None and faces:
                ious = [box_iou(prev.box, f.box) for f in faces]
                j = int(np.argmax(ious))
                if ious[j] > 0.3:
                    pick = faces[j]
            if pick is None and face_index < len(faces):
                pick = faces[face_index]
            chosen.append(pick)
            if pick is not None:
                prev = pick
            if progress is not None:
                progress(1)
        track = FaceTrack.from_faces(chosen, h, w, counts, face_index=face_index, backend=self._impl.name)
        if on_missing == "fill_nearest":
            return track.fill_nearest(input_name)
        if track.missing:
            raise NoFaceError(track.missing, track.num_frames, input_name, face_index)
        return track


def detect_landmarks(images: Frames, face_index: int = 0, on_missing: str = "error", input_name: str = "images",
                     detector: Optional[FaceDetector] = None, progress=None) -> FaceTrack:
    """Convenience: :meth:`FaceDetector.track` with a default detector (auto backend, no download)."""
    own = detector is None
    detector = detector or FaceDetector()
    try:
        return detector.track(images, face_index=face_index, on_missing=on_missing, input_name=input_name,
                              progress=progress)
    finally:
        if own:
            detector.close()
