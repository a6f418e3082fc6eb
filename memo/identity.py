"""MEMO identity embedding: the two insightface models MEMO uses, run with onnxruntime (no insightface package).

MEMO (``memo/utils/vision_utils.py``) runs insightface 0.7.3 ``FaceAnalysis`` on the ORIGINAL reference image (RGB
converted to BGR) with ``det_size (640, 640)``, keeps the face with the largest box area and uses that face's raw,
un-normalised ``embedding`` (512-d). Only two of the models in ``misc/face_analysis/models`` matter for that:

* ``scrfd_10g_bnkps.onnx`` (:class:`ScrfdDetector`): SCRFD anchor-free detector with 5 keypoints. The image is
  resized keeping its aspect ratio into the top-left corner of a black ``det_size`` canvas (``cv2.resize``, bilinear),
  the blob is ``(x - 127.5) / 128`` with BGR swapped to RGB (``cv2.dnn.blobFromImage``). Outputs: 3 score maps, then 3
  box-distance maps, then 3 keypoint-distance maps (strides 8/16/32, 2 anchors per location, distances in stride
  units). Anchors with score >= 0.5 are decoded (:func:`distance2bbox`, :func:`distance2kps`), divided by the resize
  scale, sorted by score and filtered by NMS at IoU 0.4 (:func:`nms`, insightface's "+1" box areas). When the ONNX
  input has a fixed spatial size it replaces ``det_size``, as in insightface.
* ``glintr100.onnx`` (:class:`ArcFaceRecognizer`): ArcFace R100 (Glint360K). The face is warped to 112 x 112 with
  the similarity transform that maps its 5 keypoints onto the standard ArcFace template (:func:`estimate_norm`:
  Umeyama least squares, as scikit-image's ``SimilarityTransform.estimate`` that insightface calls; then
  ``cv2.warpAffine`` bilinear with a black border); blob ``(x - mean) / std`` in RGB order with insightface's rule for
  mean/std (0/1 when one of the graph's first 8 nodes is named ``Sub``/``_minus*`` and one ``Mul``/``_mul*`` -- an
  MXNet export that normalises inside the graph -- else 127.5/127.5). The raw output row is the embedding.

Largest face: MEMO sorts the detections (insightface order: NMS order, i.e. by score) by ``(x2 - x1) * (y2 - y1)``
with a stable descending sort and takes the first (:func:`largest_face`); FaceAnalysis runs with ``max_num=0``, so
insightface's own centre-weighted ``max_num`` ranking is not involved.

No face: the original silently uses a zero vector (identity conditioning then equals the unconditioned branch). Here
:meth:`FaceEmbedder.embed` raises :class:`~..face.track.NoFaceError` naming the input and the fix, unless
``on_missing_face="uncond"`` asks for the zero vector explicitly.

Inputs are RGB: ``uint8 (H, W, 3)`` arrays, or ComfyUI ``IMAGE`` tensors / float arrays in 0..1 (``(H, W, 3)`` or
``(1, H, W, 3)``), which are rounded to uint8 first (what the original reads from the image file). onnxruntime is
imported only when a session is created; sessions come from the pack's shared helper
(:func:`..runtime.onnx.create_session`: CUDA when available, else the CPU; one session per file and
settings, shared by every embedder).
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import cv2
import numpy as np

from ..face.track import NoFaceError

log = logging.getLogger(__name__)

FAMILY = "memo"
MODEL_FILE_IDS = {"detector": "insightface_scrfd_10g_bnkps", "recognizer": "insightface_glintr100"}

EMBEDDING_DIM = 512
ON_MISSING_FACE = ("error", "uncond")

# ---- detector settings (insightface FaceAnalysis.prepare(det_size=(640, 640)); RetinaFace/SCRFD defaults) -----------
DET_SIZE = (640, 640)  # (width, height)
DET_THRESH = 0.5
NMS_THRESH = 0.4
DET_MEAN = 127.5
DET_STD = 128.0

# outputs per model -> (levels, strides, anchors per location, has keypoints); insightface's four SCRFD layouts
SCRFD_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}

# ---- recognizer settings ---------------------------------------------------------------------------------------------
# The standard ArcFace 5-point template for a 112 x 112 crop (left eye, right eye, nose tip, left/right mouth corner
# in image order), float32 as in insightface.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963],
                             [73.5318, 51.5014],
                             [56.0252, 71.7366],
                             [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float32)
MXNET_NODE_SCAN = 8  # insightface looks at the first 8 graph nodes for an in-graph Sub/Mul normalisation


class DetectedFace(NamedTuple):
    """One detection in original-image pixels: ``box`` ``(4,)`` float32 ``x1, y1, x2, y2``; ``score``; ``kps``
    ``(5, 2)`` float32 (left eye, right eye, nose, left and right mouth corners as seen in the image)."""

    box: np.ndarray
    score: float
    kps: np.ndarray

    @property
    def area(self) -> float:
        """``(x2 - x1) * (y2 - y1)`` in float32, the key MEMO sorts by."""
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------
def to_rgb_uint8(image, input_name: str = "reference_image") -> np.ndarray:
    """One RGB image as a contiguous ``uint8 (H, W, 3)`` array.

    Accepts uint8 arrays, float arrays / torch tensors in 0..1 (ComfyUI ``IMAGE``; rounded to the nearest uint8),
    ``(H, W)``, ``(H, W, 1|3|4)`` or a batch of one ``(1, H, W, C)``. Alpha is dropped (as PIL ``convert("RGB")``).
    """
    if hasattr(image, "detach"):  # torch tensor, without importing torch here
        image = image.detach().cpu()
        image = (image.float() if image.dtype.is_floating_point else image).numpy()
    arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"input '{input_name}' holds {arr.shape[0]} images; the identity embedding takes one "
                             "reference image (select one image of the batch first)")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"input '{input_name}' must be an RGB image (H, W, 3); got shape {tuple(np.shape(image))}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"input '{input_name}': unsupported image dtype {arr.dtype}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def rgb_to_bgr(image_rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_rgb[:, :, ::-1])


# ---------------------------------------------------------------------------------------------------------------------
# SCRFD decoding
# ---------------------------------------------------------------------------------------------------------------------
def anchor_centers(height: int, width: int, stride: int, num_anchors: int = 2) -> np.ndarray:
    """``(height * width * num_anchors, 2)`` float32 ``(x, y)`` anchor points of one level: row-major over the grid
    (y outer, x inner), each point repeated ``num_anchors`` times consecutively, at ``(x * stride, y * stride)``."""
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    points = np.stack([xs, ys], axis=-1).reshape(-1, 2) * np.float32(stride)
    if num_anchors > 1:
        points = np.repeat(points, num_anchors, axis=0)
    return points


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes ``(N, 4)`` ``x1, y1, x2, y2`` from points ``(N, 2)`` and distances ``(N, 4)`` (left, top, right,
    bottom)."""
    return np.stack([points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
                     points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], axis=-1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Keypoints ``(N, 2K)`` ``x0, y0, x1, y1, ...`` from points ``(N, 2)`` and offsets ``(N, 2K)`` (dx, dy pairs)."""
    n_kps = distance.shape[1] // 2
    offsets = distance[:, :2 * n_kps].reshape(-1, n_kps, 2)
    return (points[:, None, :] + offsets).reshape(-1, 2 * n_kps)


def _drop_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x[0] if x.ndim == 3 else x


def decode_scrfd(outputs: Sequence[np.ndarray], input_height: int, input_width: int, threshold: float = DET_THRESH,
                 strides: Sequence[int] = (8, 16, 32), num_anchors: int = 2, use_kps: bool = True):
    """Candidates of one SCRFD forward pass, in network-input pixels.

    ``outputs``: the session's outputs in order (``len(strides)`` score maps ``(K_i, 1)``, then as many box-distance
    maps ``(K_i, 4)``, then keypoint maps ``(K_i, 10)`` when ``use_kps``; a leading batch axis of 1 is accepted), with
    ``K_i = (H // s) * (W // s) * num_anchors`` and distances in units of the stride. Keeps anchors whose score is
    ``>= threshold``; returns ``scores (N, 1)``, ``boxes (N, 4)`` and ``kps (N, 5, 2)`` (None without keypoints),
    level by level in anchor order.
    """
    levels = len(strides)
    need = levels * (3 if use_kps else 2)
    if len(outputs) < need:
        raise ValueError(f"SCRFD decoding needs {need} outputs for strides {tuple(strides)}, got {len(outputs)}")
    scores_all, boxes_all, kps_all = [], [], []
    for i, stride in enumerate(strides):
        scores = _drop_batch(outputs[i])
        if scores.ndim == 1:
            scores = scores[:, None]
        box_dist = _drop_batch(outputs[i + levels]) * stride
        points = anchor_centers(input_height // stride, input_width // stride, stride, num_anchors)
        if scores.shape[0] != points.shape[0] or box_dist.shape[0] != points.shape[0]:
            raise ValueError(f"SCRFD stride {stride}: expected {points.shape[0]} anchors for a {input_width} x "
                             f"{input_height} input, the model gave {scores.shape[0]} scores and "
                             f"{box_dist.shape[0]} boxes (not an SCRFD model with {num_anchors} anchors?)")
        keep = np.where(scores >= threshold)[0]
        scores_all.append(scores[keep])
        boxes_all.append(distance2bbox(points, box_dist)[keep])
        if use_kps:
            kps_dist = _drop_batch(outputs[i + 2 * levels]) * stride
            kps = distance2kps(points, kps_dist)
            kps_all.append(kps.reshape(kps.shape[0], -1, 2)[keep])
    scores = np.concatenate(scores_all, axis=0)
    boxes = np.concatenate(boxes_all, axis=0)
    kps = np.concatenate(kps_all, axis=0) if use_kps else None
    return scores, boxes, kps


def nms(dets: np.ndarray, thresh: float = NMS_THRESH) -> list[int]:
    """Greedy NMS over ``dets (N, 5)`` (``x1, y1, x2, y2, score``): indices kept, highest score first. Box areas use
    insightface's pixel-inclusive ``(x2 - x1 + 1) * (y2 - y1 + 1)``; a box is suppressed when IoU > ``thresh``."""
    x1, y1, x2, y2, scores = (dets[:, j] for j in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= thresh]
    return keep


def detection_canvas(image: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """``image`` resized keeping its aspect ratio (``cv2.resize`` bilinear) into the top-left corner of a black
    ``size = (width, height)`` canvas; returns ``(canvas, scale)`` where ``scale = new_height / height``."""
    width, height = int(size[0]), int(size[1])
    im_ratio = float(image.shape[0]) / image.shape[1]
    if im_ratio > float(height) / width:
        new_h = height
        new_w = int(new_h / im_ratio)
    else:
        new_w = width
        new_h = int(new_w * im_ratio)
    if new_w < 1 or new_h < 1:
        raise ValueError(f"image of {image.shape[1]} x {image.shape[0]} pixels is too elongated to detect faces in")
    scale = float(new_h) / image.shape[0]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, scale


def largest_face(faces: Sequence[DetectedFace]) -> Optional[DetectedFace]:
    """MEMO's choice: the largest ``(x2 - x1) * (y2 - y1)``; ties keep the detector's order (stable sort)."""
    if not faces:
        return None
    return sorted(faces, key=lambda f: f.area, reverse=True)[0]


# ---------------------------------------------------------------------------------------------------------------------
# ArcFace alignment
# ---------------------------------------------------------------------------------------------------------------------
def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping ``src (N, D)`` onto ``dst (N, D)``: ``(D + 1, D + 1)`` float64
    homogeneous matrix, NaN when degenerate. Arithmetic in the inputs' dtype up to the SVD, float64 after it, as
    scikit-image's ``SimilarityTransform.estimate`` (which insightface's alignment calls with float32 points)."""
    src = np.asarray(src)
    dst = np.asarray(dst)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    signs = np.ones(dim, dtype=np.float64)
    if np.linalg.det(cov) < 0:
        signs[-1] = -1.0
    out = np.eye(dim + 1, dtype=np.float64)
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return out * np.nan
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            rot = u @ vt
        else:
            flipped = signs.copy()
            flipped[-1] = -1.0
            rot = u @ np.diag(flipped) @ vt
    else:
        rot = u @ np.diag(signs) @ vt
    rot = np.asarray(rot, dtype=np.float64)
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ signs) if estimate_scale else 1.0
    out[:dim, dim] = dst_mean - scale * (rot @ src_mean.T)
    out[:dim, :dim] = rot * scale
    return out


def arcface_template(image_size: int = 112) -> np.ndarray:
    """The 5-point template for a square crop of ``image_size`` (a multiple of 112, or of 128 with an 8/128 x-shift)."""
    if image_size % 112 == 0:
        ratio, shift_x = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise ValueError(f"ArcFace crop size must be a multiple of 112 or 128, got {image_size}")
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += shift_x
    return dst


def estimate_norm(kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """``(2, 3)`` float64 matrix warping the image so that the 5 keypoints ``kps`` land on the ArcFace template."""
    kps = np.asarray(kps)
    if kps.shape != (5, 2):
        raise ValueError(f"ArcFace alignment needs 5 (x, y) keypoints, got shape {kps.shape}")
    return umeyama(kps, arcface_template(image_size), True)[0:2, :]


def norm_crop(image: np.ndarray, kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned ``image_size`` square face crop (bilinear ``cv2.warpAffine``, black outside the image)."""
    return cv2.warpAffine(image, estimate_norm(kps, image_size), (image_size, image_size), borderValue=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# ONNX files
# ---------------------------------------------------------------------------------------------------------------------
def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _message_fields(buf, start: int, end: int):
    """``(field number, wire type, value start, value end)`` of each field of a protobuf message in ``buf[start:end]``
    (the span is the payload for length-delimited fields)."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value_start = pos
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 2:
            length, value_start = _varint(buf, pos, end)
            pos = value_start + length
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, value_start, pos


def onnx_node_names(path: str | Path, limit: int = MXNET_NODE_SCAN) -> list[str]:
    """Names of the first ``limit`` nodes of an ONNX file's graph, read straight from the protobuf (no ``onnx``
    package; the file is memory-mapped, so the weights are not read). Raises ``ValueError`` on a malformed file."""
    graph_field, node_field, name_field = 7, 1, 3  # ModelProto.graph, GraphProto.node, NodeProto.name
    names: list[str] = []
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ValueError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, start, end in _message_fields(buf, 0, size):
                if number != graph_field or wire != 2:
                    continue
                for n2, w2, s2, e2 in _message_fields(buf, start, end):
                    if n2 != node_field or w2 != 2:
                        continue
                    name = ""
                    for n3, w3, s3, e3 in _message_fields(buf, s2, e2):
                        if n3 == name_field and w3 == 2:
                            name = bytes(buf[s3:e3]).decode("utf-8", "replace")
                    names.append(name)
                    if len(names) >= limit:
                        return names
                return names
    raise ValueError("no graph in the file")


def arcface_input_normalisation(path: str | Path) -> tuple[float, float]:
    """insightface's ``(mean, std)`` rule for an ArcFace ONNX file: ``(0, 1)`` when its first 8 nodes include both a
    ``Sub``/``_minus*`` and a ``Mul``/``_mul*`` node (MXNet export normalising in the graph), else
    ``(127.5, 127.5)``."""
    from ..loaders.store import CorruptModelFile

    try:
        names = onnx_node_names(path)
    except (ValueError, OSError) as e:
        raise CorruptModelFile(None, Path(path), f"its ONNX graph cannot be read ({e})") from e
    has_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    has_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _create_session(path: str | Path, device: Optional[str]):
    from ..loaders.store import ModelFileError
    from ..runtime.onnx import create_session

    try:
        return create_session(path, device)
    except FileNotFoundError:
        raise
    except ImportError as e:
        raise ImportError("the MEMO identity embedding needs onnxruntime (pip install onnxruntime, or "
                          "onnxruntime-gpu for CUDA)") from e
    except Exception as e:  # onnxruntime's load errors: usually a damaged or wrong file
        raise ModelFileError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}. If the file is damaged, "
                             "delete it and download it again (enable 'download' on the loader node).") from e


def _static_hw(shape) -> Optional[tuple[int, int]]:
    """``(height, width)`` of an NCHW input shape when both are fixed integers, else None."""
    if len(shape) != 4:
        return None
    h, w = shape[2], shape[3]
    return (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------
class ScrfdDetector:
    """SCRFD face detector (``scrfd_10g_bnkps.onnx``) with insightface's pre- and post-processing.

    ``detect(image_bgr)`` -> ``(dets (N, 5) float32 x1, y1, x2, y2, score; kps (N, 5, 2) float32)`` in image pixels,
    in NMS order (highest score first).
    """

    def __init__(self, model_path: str | Path | None = None, det_size: tuple[int, int] = DET_SIZE,
                 det_thresh: float = DET_THRESH, nms_thresh: float = NMS_THRESH, device: Optional[str] = None,
                 session=None):
        if session is None:
            if model_path is None:
                raise ValueError("ScrfdDetector needs a model path or a session")
            session = _create_session(model_path, device)
        self.session = session
        self.name = str(model_path) if model_path is not None else "SCRFD session"
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in session.get_outputs()]
        layout = SCRFD_LAYOUTS.get(len(self.output_names))
        if layout is None:
            raise ValueError(f"{self.name}: {len(self.output_names)} outputs; an SCRFD detector has 6, 9, 10 or 15")
        self.strides, self.num_anchors, self.use_kps = layout
        if not self.use_kps:
            raise ValueError(f"{self.name}: this SCRFD model has no keypoint outputs; the ArcFace alignment needs "
                             "them (use scrfd_10g_bnkps.onnx)")
        fixed = _static_hw(inp.shape)
        if fixed is not None:  # insightface: a model with a fixed input size ignores det_size
            if (fixed[1], fixed[0]) != tuple(det_size):
                log.warning("%s has a fixed %d x %d input; det_size %s is ignored", self.name, fixed[1], fixed[0],
                            tuple(det_size))
            self.input_size = (fixed[1], fixed[0])
        else:
            self.input_size = (int(det_size[0]), int(det_size[1]))
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        canvas, scale = detection_canvas(image_bgr, self.input_size)
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / DET_STD, self.input_size, (DET_MEAN, DET_MEAN, DET_MEAN),
                                     swapRB=True)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        scores, boxes, kps = decode_scrfd(outputs, blob.shape[2], blob.shape[3], self.det_thresh, self.strides,
                                          self.num_anchors, True)
        order = scores.ravel().argsort()[::-1]
        boxes = boxes / scale
        kps = kps / scale
        candidates = np.hstack((boxes, scores)).astype(np.float32, copy=False)[order, :]
        keep = nms(candidates, self.nms_thresh)
        return candidates[keep, :], kps[order][keep]


class ArcFaceRecognizer:
    """ArcFace recognizer (``glintr100.onnx``): ``embed(image_bgr, kps)`` -> raw embedding ``(D,)`` float32."""

    def __init__(self, model_path: str | Path | None = None, device: Optional[str] = None, session=None,
                 input_mean: Optional[float] = None, input_std: Optional[float] = None):
        if (input_mean is None) != (input_std is None):
            raise ValueError("give both input_mean and input_std, or neither")
        if input_mean is None:
            if model_path is None:
                raise ValueError("ArcFaceRecognizer needs the model path (or input_mean/input_std with a session)")
            input_mean, input_std = arcface_input_normalisation(model_path)
        if session is None:
            if model_path is None:
                raise ValueError("ArcFaceRecognizer needs a model path or a session")
            session = _create_session(model_path, device)
        self.session = session
        self.name = str(model_path) if model_path is not None else "ArcFace session"
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        inp = session.get_inputs()[0]
        hw = _static_hw(inp.shape)
        if hw is None or hw[0] != hw[1]:
            raise ValueError(f"{self.name}: expected a fixed square NCHW input, got {inp.shape}")
        self.input_name = inp.name
        self.input_size = (hw[1], hw[0])
        outputs = session.get_outputs()
        if len(outputs) != 1:
            raise ValueError(f"{self.name}: an ArcFace model has one output, this one has {len(outputs)}")
        self.output_names = [outputs[0].name]

    def embed_crop(self, crop_bgr: np.ndarray) -> np.ndarray:
        """Embedding of an already aligned BGR crop of ``input_size``."""
        blob = cv2.dnn.blobFromImage(crop_bgr, 1.0 / self.input_std, self.input_size,
                                     (self.input_mean, self.input_mean, self.input_mean), swapRB=True)
        out = self.session.run(self.output_names, {self.input_name: blob})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def embed(self, image_bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        return self.embed_crop(norm_crop(image_bgr, kps, self.input_size[0]))


class FaceEmbedder:
    """MEMO's identity embedding: SCRFD detection on the original image, the largest face, its raw ArcFace embedding.

    ``FaceEmbedder(det_path, rec_path)`` or ``FaceEmbedder.from_store(store, download)`` (manifest ``memo``, group
    ``face``). ``embed(image)`` -> ``(512,)`` float32; ``detect(image)`` -> list of :class:`DetectedFace`.
    """

    def __init__(self, det_path: str | Path | None = None, rec_path: str | Path | None = None,
                 device: Optional[str] = None, det_size: tuple[int, int] = DET_SIZE, det_thresh: float = DET_THRESH,
                 detector: Optional[ScrfdDetector] = None, recognizer: Optional[ArcFaceRecognizer] = None):
        if detector is None:
            if det_path is None:
                raise ValueError("FaceEmbedder needs det_path (scrfd_10g_bnkps.onnx) or a detector")
            detector = ScrfdDetector(det_path, det_size=det_size, det_thresh=det_thresh, device=device)
        if recognizer is None:
            if rec_path is None:
                raise ValueError("FaceEmbedder needs rec_path (glintr100.onnx) or a recognizer")
            recognizer = ArcFaceRecognizer(rec_path, device=device)
        self.detector = detector
        self.recognizer = recognizer

    @classmethod
    def from_store(cls, store=None, download: bool = False, device: Optional[str] = None, **kwargs) -> "FaceEmbedder":
        """Resolve both ONNX files through the model store (``ModelStore.default()`` when ``store`` is None); raises
        ``MissingModelFiles`` naming each missing file, its source and destination."""
        paths = model_files(store=store, download=download)
        return cls(paths["detector"], paths["recognizer"], device=device, **kwargs)

    def detect(self, image, input_name: str = "reference_image") -> list[DetectedFace]:
        """All faces (score >= det_thresh after NMS) of an RGB image, highest score first."""
        return self._detect_bgr(rgb_to_bgr(to_rgb_uint8(image, input_name)))

    def _detect_bgr(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        dets, kps = self.detector.detect(image_bgr)
        return [DetectedFace(box=dets[i, :4].copy(), score=float(dets[i, 4]), kps=kps[i].copy())
                for i in range(dets.shape[0])]

    def embed(self, image, input_name: str = "reference_image", on_missing_face: str = "error") -> np.ndarray:
        """Raw ArcFace embedding ``(512,)`` float32 of the largest face of an RGB image.

        No face: raises :class:`NoFaceError` (a ``ValueError``) naming ``input_name``, or, with
        ``on_missing_face="uncond"``, returns the zero vector (MEMO's fallback: identity conditioning = unconditioned).
        """
        if on_missing_face not in ON_MISSING_FACE:
            raise ValueError(f"on_missing_face must be one of {ON_MISSING_FACE}, got {on_missing_face!r}")
        image_bgr = rgb_to_bgr(to_rgb_uint8(image, input_name))
        face = largest_face(self._detect_bgr(image_bgr))
        if face is None:
            if on_missing_face == "uncond":
                log.warning("no face found in input '%s'; using the zero identity embedding (unconditioned identity)",
                            input_name)
                return np.zeros(EMBEDDING_DIM, dtype=np.float32)
            raise NoFaceError([0], 1, input_name=input_name,
                              hint="the MEMO identity embedding needs a visible face: use a clearer, front-facing "
                                   "portrait, or set on_missing_face='uncond' to continue without identity "
                                   "conditioning (the original's zero embedding)")
        return self.recognizer.embed(image_bgr, face.kps)


def model_files(store=None, download: bool = False) -> dict[str, Path]:
    """Paths of the detector and recognizer ONNX files (keys of :data:`MODEL_FILE_IDS`) from the model store."""
    from ..loaders.manifest import load_manifest
    from ..loaders.store import ModelStore

    manifest = load_manifest(FAMILY)
    files = {key: manifest.file(file_id) for key, file_id in MODEL_FILE_IDS.items()}
    found = (store or ModelStore.default()).ensure(list(files.values()), download=download)
    return {key: Path(found[f.id]) for key, f in files.items()}


__all__ = ["ARCFACE_TEMPLATE", "ArcFaceRecognizer", "DET_SIZE", "DetectedFace", "EMBEDDING_DIM", "FaceEmbedder",
           "NoFaceError", "ON_MISSING_FACE", "ScrfdDetector", "anchor_centers", "arcface_input_normalisation",
           "decode_scrfd", "detection_canvas", "distance2bbox", "distance2kps", "estimate_norm", "largest_face",
           "model_files", "nms", "norm_crop", "onnx_node_names", "to_rgb_uint8", "umeyama"]
