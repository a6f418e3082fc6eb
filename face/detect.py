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

MediaPipe graphs are native objects (about 65 MB for the bundled three) that Python's garbage collector cannot
free: each legacy graph holds a callback to its own Python wrapper, a cycle through C++. They are freed only by
``close()``. So a :class:`FaceDetector` is just its settings and owns no graph: for each call it leases the graphs
from :data:`GRAPHS`, a pool keyed by the settings that shape a graph and shared between detectors with identical
settings, which keeps a few idle sets for reuse and closes the rest. Whatever ComfyUI's cache keeps (0.3.x drops a
node's output at the next prompt, 0.33+ keeps outputs until RAM runs short), a server that builds a detector per job
holds a bounded number of graphs.
"""
from __future__ import annotations

import logging
import math
import threading
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterator, Optional

import cv2
import numpy as np

from .constants import BACKENDS, ON_MISSING
from .frames import Frames, as_batch, frame_size, frame_uint8
from .track import Face, FaceTrack, NoFaceError

TASK_FAMILY, TASK_FILE_ID = "face", "face_landmarker"
log = logging.getLogger("portrait_animation")

_MESH_CROP = 384          # side of the square crop the bundled mesh runs on (the face fills about half of it)
_MESH_CROP_SCALE = 2.0    # crop side / largest side of the detector's box
_DEDUPE_IOU = 0.5
IDLE_GRAPH_SETS = 4       # graph sets kept open for reuse once no detector uses them


_malloc_trim = None


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc; a no-op elsewhere). Closing MediaPipe graphs frees their memory
    into glibc's per-thread arenas, which keep it: a server that builds and closes graphs for every job would grow
    by fragmentation although nothing leaks (measured: +150 MB over 200 detectors without this, flat with it)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            import ctypes.util

            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


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


def _require_bundled():
    """mediapipe, or a clear error when it carries no bundled face models."""
    mp = _import_mediapipe()
    if not bundled_available():
        raise RuntimeError(f"the installed mediapipe {getattr(mp, '__version__', '?')} carries no bundled face "
                           "models (they were removed after 0.10.21); use the 'task' backend "
                           "(face_landmarker.task, downloaded by the Face Detector node when 'download' is on)")
    return mp


class _BundledBackend:
    name = "bundled"
    graph_count = 3

    def __init__(self, max_faces: int, min_confidence: float):
        mp = _require_bundled()
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
    graph_count = 1

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


# ---- shared graphs ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _GraphSet:
    """One backend's graphs, used by every detector with the same settings; ``lock`` serialises calls into them
    (MediaPipe graphs are not re-entrant)."""

    key: Hashable
    backend: object
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class GraphPool:
    """MediaPipe graph sets keyed by settings: shared while in use, kept for reuse when idle, closed beyond a bound.

    ``acquire(key)`` returns the set for ``key`` (built by :func:`_build_backend` when there is none) and counts one
    user; ``release(key)`` uncounts one; ``lease(key)`` does both around a ``with`` block. A set no one uses becomes
    idle; the ``max_idle`` most recently released idle sets stay open, older ones are closed. Open sets are therefore
    at most the distinct settings of the calls running right now plus ``max_idle``.
    """

    def __init__(self, max_idle: int = IDLE_GRAPH_SETS):
        self.max_idle = max_idle
        self._sets: dict[Hashable, _GraphSet] = {}
        self._idle: "OrderedDict[Hashable, None]" = OrderedDict()
        self._lock = threading.Lock()  # sets are built under it, so two callers never build the same set twice

    def acquire(self, key: Hashable) -> _GraphSet:
        with self._lock:
            graphs = self._sets.get(key)
            if graphs is None:
                graphs = _GraphSet(key, _build_backend(key))
                self._sets[key] = graphs
            graphs.users += 1
            self._idle.pop(key, None)
            return graphs

    def release(self, key: Hashable) -> None:
        with self._lock:
            graphs = self._sets.get(key)
            if graphs is None or graphs.users <= 0:
                return
            graphs.users -= 1
            if graphs.users == 0:
                self._idle[key] = None
                self._trim(self.max_idle)

    @contextmanager
    def lease(self, key: Hashable) -> Iterator[_GraphSet]:
        graphs = self.acquire(key)
        try:
            yield graphs
        finally:
            self.release(key)

    def _trim(self, keep: int) -> None:
        closed = False
        while len(self._idle) > keep:
            key, _ = self._idle.popitem(last=False)
            graphs = self._sets.pop(key)
            with graphs.lock:  # not while a call is inside the graphs
                graphs.backend.close()
            closed = True
        if closed:
            _return_freed_memory()

    def clear_idle(self) -> None:
        """Close every idle set (sets in use stay)."""
        with self._lock:
            self._trim(0)

    def stats(self) -> dict:
        """``{"sets": open sets, "graphs": open MediaPipe graphs, "idle": idle sets, "users": leases}``."""
        with self._lock:
            return {"sets": len(self._sets), "idle": len(self._idle),
                    "graphs": sum(g.backend.graph_count for g in self._sets.values()),
                    "users": sum(g.users for g in self._sets.values())}


def _build_backend(key: tuple):
    """The backend a pool key describes (see :meth:`FaceDetector.graph_key`)."""
    version = getattr(_import_mediapipe(), "__version__", "?")
    if key[0] == "bundled":
        _, max_faces, min_confidence = key
        log.info("face detection: MediaPipe %s, bundled face models", version)
        return _BundledBackend(max_faces, min_confidence)
    _, path, _size, _mtime, max_faces, min_confidence = key
    log.info("face detection: MediaPipe %s, task backend (%s)", version, path)
    return _TaskBackend(Path(path), max_faces, min_confidence)


GRAPHS = GraphPool()


class FaceDetector:
    """MediaPipe face detector and landmarker.

    ``FaceDetector(backend="auto", max_faces=4, min_confidence=0.5, store=None, download=False, task_path=None)``

    * ``backend``: "auto", "bundled" or "task" (see the module docstring).
    * ``store``: the :class:`~loaders.store.ModelStore` that resolves ``face_landmarker.task`` (default:
      ``ModelStore.default()``); ``task_path`` bypasses the store.
    * ``download``: let the store fetch the task file when it is needed and missing.

    A detector holds only its settings and the key of its graphs (resolved once, by :meth:`prepare` or the first
    call); each :meth:`detect` / :meth:`track` call leases the graphs from :data:`GRAPHS` (detectors with the same
    settings share one set; calls into it are serialised with its lock), so keeping detectors alive, in a cache or
    anywhere, keeps no graph open.
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
        self._key: Optional[tuple] = None  # the pool key, resolved on first use
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        active = self._key[0] if self._key is not None else "not loaded"
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

    def graph_key(self) -> tuple:
        """The settings that shape this detector's graphs; detectors with equal keys share them."""
        if self.resolved_backend() == "bundled":
            _require_bundled()  # checked before the pool is asked: it may hold a set built when it was available
            return ("bundled", self.max_faces, self.min_confidence)
        path = self._task_file(download=self.download)
        st = path.stat()  # a replaced file gets new graphs
        return ("task", str(path.resolve()), st.st_size, st.st_mtime_ns, self.max_faces, self.min_confidence)

    def _pool_key(self) -> tuple:
        with self._lock:
            if self._key is None:
                key = self.graph_key()
                with GRAPHS.lease(key):  # built now: a broken model is reported by whoever resolves the backend
                    pass
                self._key = key
            return self._key

    def prepare(self) -> "FaceDetector":
        """Resolve the backend and build its graphs now (downloads the task file if needed and allowed), so a
        missing model is reported here; the graphs wait in the pool for the first call. Returns ``self``."""
        self._pool_key()
        return self

    @property
    def active_backend(self) -> str:
        return self._pool_key()[0]

    def close(self) -> None:
        """Forget the resolved backend (a detector holds no graphs between calls; the pool owns them)."""
        with self._lock:
            self._key = None

    def __getstate__(self):  # picklable/copyable
        state = dict(self.__dict__)
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @contextmanager
    def _graphs(self) -> Iterator[_GraphSet]:
        """The graphs for this detector's settings, leased for the duration of a ``with`` block."""
        with GRAPHS.lease(self._pool_key()) as graphs:
            yield graphs

    # ---- detection --------------------------------------------------------------------------------------------------
    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in one frame (``[H, W, 3]`` uint8 RGB, or float 0..1), largest first."""
        rgb = frame_uint8([frame], 0)
        with self._graphs() as graphs, graphs.lock:
            return graphs.backend.detect(rgb)

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
        chosen: list[Optional[Face]] = []
        counts: list[int] = []
        prev: Optional[Face] = None
        with self._graphs() as graphs:  # leased for the whole clip, so the pool does not close them mid-way
            backend = graphs.backend.name
            for i in range(len(images)):
                rgb = frame_uint8(images, i)
                if rgb.shape[:2] != (h, w):
                    raise ValueError(f"input '{input_name}': frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 "
                                     f"is {w}x{h}; all frames of a batch must have the same size")
                with graphs.lock:
                    faces = graphs.backend.detect(rgb)
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
        track = FaceTrack.from_faces(chosen, h, w, counts, face_index=face_index, backend=backend)
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
