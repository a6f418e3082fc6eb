"""HunyuanPortrait's face detector: YOLOv5m-face, released as the TorchScript file ``yoloface_v5m.pt``.

The frame is scaled so its shorter side is about 416 pixels, each side rounded up to a multiple of 32, and fed to the
network together with the cell-coordinate grids of its three output strides (8, 16, 32). The network answers one row
per anchor, ``cx, cy, w, h, objectness, 10 landmark coordinates, class score`` in input pixels; rows are kept when
both the objectness and ``objectness * class`` pass the confidence threshold, then greedy non-maximum suppression
removes overlapping boxes, and boxes and landmarks are scaled back to the frame's own pixels.

    detect = YoloFaceDetector("models/portrait_animation/hunyuan_portrait/yoloface_v5m.pt")
    boxes, landmarks = detect(rgb)                 # (k, 4) x, y, w, h and (k, 5, 2), float64, frame pixels
    boxes, landmarks, scores = detect.detect(rgb)  # with the (k,) confidences

An instance is a ``Detector`` for :mod:`hunyuan_portrait.preprocess` (that module is not imported here).
Landmarks are ordered left eye, right eye, nose, left and right mouth corner (image left / right).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

SHORT_SIDE = 416
MULTIPLE = 32
STRIDES = (8, 16, 32)
CONF_THRESHOLD = 0.5
IOU_THRESHOLD = 0.45
ROW_SIZE = 16  # cx, cy, w, h, objectness, 5 x (x, y) landmarks, class score


# ---------------------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------------------
def detection_size(h0: int, w0: int, short_side: int = SHORT_SIDE, multiple: int = MULTIPLE) -> tuple[int, int]:
    """Network input ``(h1, w1)`` for a ``h0 x w0`` frame: both sides scaled by ``short_side / min(h0, w0)``, then
    rounded up to a multiple of ``multiple`` (the scaled side is truncated to an int first, after adding
    ``multiple - 1``, as the reference)."""
    if h0 <= 0 or w0 <= 0:
        raise ValueError(f"image size must be positive, got {h0} x {w0}")
    r = short_side / min(h0, w0)
    h1 = int(h0 * r + multiple - 1) // multiple * multiple
    w1 = int(w0 * r + multiple - 1) // multiple * multiple
    return h1, w1


def anchor_grids(h1: int, w1: int, strides: Sequence[int] = STRIDES,
                 device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """One float32 grid per stride ``s``, each (1, 1, h1 // s, w1 // s, 2): ``grid[0, 0, j, i] = (i, j)``, i.e. the
    last axis is (x, y), x counting along the last-but-one axis and y along the one before it."""
    grids = []
    for s in strides:
        ny, nx = h1 // s, w1 // s
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")  # (ny, nx) each
        grids.append(torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float().to(device))
    return grids


def nms(boxes_xyxy: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``: boxes (n, 4) x1, y1, x2, y2 and scores (n,) ->
    int64 indices of the kept boxes, highest score first. Going down the scores, a box is dropped when its IoU with
    an already kept box is above ``iou``."""
    boxes = torch.as_tensor(boxes_xyxy)
    scores = torch.as_tensor(scores)
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]                                                      # (n, 4), by score
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1) * (y2 - y1)                                          # (n,)
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        overlap = inter / (area[i] + area[rest] - inter)                  # NaN for two empty boxes: kept
        removed[rest] |= overlap.double() > iou  # in float64 as torchvision, not against iou rounded to float32
    return order[torch.as_tensor(keep, dtype=torch.int64)]


def decode_predictions(pred: torch.Tensor, conf: float = CONF_THRESHOLD,
                       iou: float = IOU_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network rows (A, 16) (or (1, A, 16)) in input pixels -> ``(boxes (k, 4) x1, y1, x2, y2, scores (k,),
    landmarks (k, 5, 2))``, float32 on the CPU, highest score first.

    A row is a candidate when its objectness is above ``conf``; its score is ``objectness * class``, which must be
    above ``conf`` too; then :func:`nms` with threshold ``iou`` (one class, so no per-class offset)."""
    pred = torch.as_tensor(pred).detach().to("cpu", torch.float32)
    if pred.ndim == 3 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.ndim != 2 or pred.shape[1] != ROW_SIZE:
        raise ValueError(f"expected face detector rows of shape (A, {ROW_SIZE}), got {tuple(pred.shape)}")
    x = pred[pred[:, 4] > conf]                                           # (c, 16)
    score = x[:, 15] * x[:, 4]                                            # (c,)
    cx, cy, w, h = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
    boxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1)  # (c, 4)
    ok = score > conf
    boxes, score, landmarks = boxes[ok], score[ok], x[ok, 5:15]
    keep = nms(boxes, score, iou)                                         # (k,)
    return boxes[keep], score[keep], landmarks[keep].reshape(-1, 5, 2)


# ---------------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------------
def as_rgb_uint8(image) -> np.ndarray:
    """An (H, W, 3) RGB image as contiguous uint8: uint8 as is, other integers in 0..255, floats in [0, 1] (scaled
    by 255 and rounded). Anything else raises ``ValueError`` naming the shape / dtype."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"the face detector takes one RGB image of shape (H, W, 3), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"the face detector takes a uint8 or float [0, 1] image, got dtype {arr.dtype} "
                         f"(shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"integer image of shape {arr.shape} has values outside 0..255")
        return np.ascontiguousarray(arr.astype(np.uint8))
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise ValueError(f"float image of shape {arr.shape} must hold finite values in [0, 1] "
                         f"(got {np.nanmin(arr):g} .. {np.nanmax(arr):g})")
    return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def load_torchscript(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """``torch.jit.load`` onto the CPU; a missing file or one that is not TorchScript raises ``ModelFileError``."""
    from ..loaders.store import ModelFileError

    path = Path(path)
    need = ("HunyuanPortrait needs the TorchScript face detector yoloface_v5m.pt from the Hugging Face repository "
            "LeonJoe13/Sonic")
    if not path.is_file():
        raise ModelFileError(f"face detector file {path} does not exist. {need}.")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch reports a zip without TorchScript code, or garbage, as RuntimeError
        raise ModelFileError(f"{path} is not a TorchScript model ({type(e).__name__}: {str(e).splitlines()[0]}). "
                             f"{need} (a pickled state dict or YOLOv5 training checkpoint does not work).") from e


# ---------------------------------------------------------------------------------------------------------------------
# detector
# ---------------------------------------------------------------------------------------------------------------------
class YoloFaceDetector:
    """YOLOv5-face on uint8 RGB frames. ``model`` is a path to ``yoloface_v5m.pt`` or an already loaded module
    called as ``model(img (1, 3, h1, w1) float RGB in [0, 1], grids) -> (1, A, 16)``.

    Calls are serialised by a lock (the grid cache and the module are shared), and run without autograd."""

    def __init__(self, model: str | os.PathLike | torch.nn.Module, device: torch.device | str = "cpu",
                 conf: float = CONF_THRESHOLD, iou: float = IOU_THRESHOLD, short_side: int = SHORT_SIDE):
        self.path = None if isinstance(model, torch.nn.Module) else Path(model)
        self.model = model if isinstance(model, torch.nn.Module) else load_torchscript(model)
        self.model.eval()
        self.conf, self.iou, self.short_side = float(conf), float(iou), int(short_side)
        self.device = torch.device("cpu")
        self._grids: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.to(device)

    def to(self, device: torch.device | str) -> "YoloFaceDetector":
        with self._lock:
            self.device = torch.device(device)
            self.model.to(self.device)
            self._grids.clear()
        return self

    def _grids_for(self, h1: int, w1: int) -> list[torch.Tensor]:
        grids = self._grids.get((h1, w1))
        if grids is None:
            grids = self._grids[(h1, w1)] = anchor_grids(h1, w1, STRIDES, self.device)
        return grids

    def detect(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB image (H, W, 3) -> ``(boxes (k, 4) x, y, w, h, landmarks (k, 5, 2) x, y, scores (k,))``, float64 in
        the image's pixels, highest score first (k may be 0)."""
        rgb = as_rgb_uint8(image)                                         # (h0, w0, 3) uint8
        h0, w0 = rgb.shape[:2]
        h1, w1 = detection_size(h0, w0, self.short_side, MULTIPLE)
        resized = cv2.resize(rgb, (w1, h1), interpolation=cv2.INTER_LINEAR)  # (h1, w1, 3) uint8
        with self._lock, torch.inference_mode():
            img = torch.from_numpy(resized).to(self.device).permute(2, 0, 1).float().div(255)[None]  # (1, 3, h1, w1)
            pred = self.model(img, self._grids_for(h1, w1))               # (1, A, 16)
            pred = pred.to("cpu", torch.float32)
        boxes, scores, landmarks = decode_predictions(pred, self.conf, self.iou)  # input pixels
        sx, sy = w0 / w1, h0 / h1
        b = boxes.double().numpy()
        x, y = b[:, 0] * sx, b[:, 1] * sy
        xywh = np.stack((x, y, b[:, 2] * sx - x, b[:, 3] * sy - y), 1).reshape(-1, 4)   # (k, 4)
        points = landmarks.double().numpy() * np.array([sx, sy])                        # (k, 5, 2)
        return xywh, points, scores.double().numpy()

    def __call__(self, image) -> tuple[np.ndarray, np.ndarray]:
        """The ``Detector`` interface: ``(boxes (k, 4) x, y, w, h, landmarks (k, 5, 2))``."""
        boxes, landmarks, _ = self.detect(image)
        return boxes, landmarks

    def __repr__(self) -> str:
        return (f"YoloFaceDetector({str(self.path) if self.path else type(self.model).__name__}, "
                f"device={self.device}, conf={self.conf}, iou={self.iou})")


__all__ = ["YoloFaceDetector", "anchor_grids", "as_rgb_uint8", "decode_predictions", "detection_size",
           "load_torchscript", "nms"]
