"""HunyuanPortrait pre-processing geometry (official ``src/dataset/test_preprocess.py``), given face detections.

A detector is any callable ``detect(rgb uint8 (H, W, 3)) -> (boxes (k, 4) x,y,w,h, landmarks (k, 5, 2) x,y)`` with
the 5 points ordered eyes, nose, mouth corners; the largest ``w * h`` is used in every call.

Source image (:func:`prepare_source`):
  square crop box = :func:`square_crop_box` of the face box (3x box clipped to the image, made square, kept for
  paste-back) -> PIL crop + bicubic resize to 512 -> second detection on the crop (ArcFace landmarks);
  ``ref_img`` in [-1, 1]; DINO input = antialiased bilinear resize to 224 + ImageNet mean/std; ArcFace face =
  :func:`align_face` (similarity to the +8-shifted 112 template, bilinear warp with a constant-0 border).
Driving frames (:func:`prepare_driving`):
  head crop box from frame 0 only (same square box rule), PIL crop + bicubic 512 + bilinear 256 -> [0, 1];
  expression crop per frame: the 5-landmark hull pushed 45% toward the **frame-0** face box, square centre crop with
  zero padding, bilinear resize of the shorter side to 256 -> [0, 1].
The resamplers are PIL's (bicubic / bilinear) and torch's antialiased bilinear, as the original.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
NO_FACE_HINT = ("HunyuanPortrait needs one clearly visible face (YOLOv5-face, confidence 0.5): use a portrait where "
                "the face is not tiny, cut off or strongly turned away")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the 96x112 five-point template (eyes, nose, mouth corners) in float32; +8 in x gives the 112x112 ArcFace template
ARCFACE_TEMPLATE_96 = np.array([(30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655),
                                (62.7299, 92.2041)], dtype=np.float32)
ARCFACE_SHIFT_X = 8.0


# ---------------------------------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------------------------------
def largest_face(boxes: np.ndarray) -> int:
    """Index of the detection with the largest ``w * h`` (boxes x,y,w,h; first one on ties)."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        raise ValueError("no face detected")
    return int(np.argmax(boxes[:, 2] * boxes[:, 3]))


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def square_crop_box(box: Sequence[float], expand_ratio: float, height: int, width: int) -> list[int]:
    """Square crop ``[x1, y1, x2, y2]`` (ints) around a face box ``x1, y1, x2, y2``.

    The box grows by ``expand_ratio`` x its width/height on every side and is clipped to the image; the square's
    side is the shorter side of that clipped box, and its centre moves from the clipped box's centre toward the face
    centre along the longer axis, by at most half the excess. Corners are rounded half to even (Python ``round``).
    """
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - expand_ratio * bw, 0), max(y1 - expand_ratio * bh, 0)
    ex2, ey2 = min(x2 + expand_ratio * bw, width), min(y2 + expand_ratio * bh, height)
    h, w = ey2 - ey1, ex2 - ex1
    cy, cx = (ey1 + ey2) / 2, (ex1 + ex2) / 2
    half = min(h, w) / 2
    face_cy, face_cx = (y1 + y2) / 2, (x1 + x2) / 2
    excess = abs((h - w) / 2)
    if w < h:
        shift = min(excess, abs(face_cy - cy))
        cy = cy + (shift if face_cy > cy else -shift)
    else:
        shift = min(excess, abs(face_cx - cx))
        cx = cx + (shift if face_cx > cx else -shift)
    return [round(cx - half), round(cy - half), round(cx + half), round(cy + half)]


def motion_crop_box(landmarks: np.ndarray, face_box: Sequence[float], scale: float = 0.45) -> np.ndarray:
    """(4,) float64 x1,y1,x2,y2: the hull of the 5 landmarks, each side moved ``scale`` of the way to ``face_box``."""
    pts = np.asarray(landmarks)
    x_min, x_max = min(pts[:, 0]), max(pts[:, 0])
    y_min, y_max = min(pts[:, 1]), max(pts[:, 1])
    bx1, by1, bx2, by2 = face_box
    return np.asarray([x_min - (x_min - bx1) * scale, y_min - (y_min - by1) * scale,
                       x_max + (bx2 - x_max) * scale, y_max + (by2 - y_max) * scale])


def square_centre_crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The square ``[c - half, c + half)`` around the box centre (``c = int`` of the midpoint, ``half = int(longer
    side) // 2``), zero outside the image. (H, W, C) uint8 -> (2 half, 2 half, C)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box[:4]
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    half = int(max(x1 - x0, y1 - y0)) // 2
    out = np.zeros((2 * half, 2 * half) + image.shape[2:], dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(cx - half, 0), max(cy - half, 0), min(cx + half, w), min(cy + half, h)
    if sx1 > sx0 and sy1 > sy0:
        ox, oy = sx0 - (cx - half), sy0 - (cy - half)
        out[oy:oy + sy1 - sy0, ox:ox + sx1 - sx0] = image[sy0:sy1, sx0:sx1]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# resampling and tensors
# ---------------------------------------------------------------------------------------------------------------------
def crop_resize(image: Image.Image, box: Sequence[int], size: int) -> Image.Image:
    """PIL crop to ``box`` then bicubic resize (PIL's default filter) to ``size x size``."""
    return image.crop(tuple(box)).resize((size, size), Image.Resampling.BICUBIC)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bilinear (PIL) resize so the shorter side is ``size`` (the longer one truncated), as ``Resize(size)``."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    arr = np.array(image, dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div(255)


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def vae_input(crop: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]."""
    return _normalise(to_tensor(crop), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def dino_input(crop: Image.Image, size: int = 224) -> torch.Tensor:
    """(3, size, size) float32: antialiased bilinear resize of the whole crop, then ImageNet mean/std."""
    x = to_tensor(crop)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return _normalise(x, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------------------------------------------------------------
# ArcFace alignment
# ---------------------------------------------------------------------------------------------------------------------
def arcface_template(shift_x: float = ARCFACE_SHIFT_X) -> np.ndarray:
    """(5, 2) float32 112x112 ArcFace template (the 96x112 one shifted ``shift_x`` in x)."""
    dst = ARCFACE_TEMPLATE_96.copy()
    dst[:, 0] += shift_x
    return dst


def similarity_estimate(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(3, 3) float64 least-squares similarity (Umeyama) mapping ``src`` (N, 2) onto ``dst`` (N, 2).

    Means and centring run in each array's own dtype (a float32 template stays float32 until it meets the float64
    points), as scikit-image's ``SimilarityTransform.estimate``; NaN when degenerate."""
    src, dst = np.asarray(src), np.asarray(dst)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    signs = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(cov) < 0:
        signs[dim - 1] = -1
    out = np.eye(dim + 1, dtype=np.float64)
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return np.nan * out
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            out[:dim, :dim] = u @ vt
        else:
            keep = signs[dim - 1]
            signs[dim - 1] = -1
            out[:dim, :dim] = u @ np.diag(signs) @ vt
            signs[dim - 1] = keep
    else:
        out[:dim, :dim] = u @ np.diag(signs) @ vt
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ signs)
    out[:dim, dim] = dst_mean - scale * (out[:dim, :dim] @ src_mean.T)
    out[:dim, :dim] *= scale
    return out


def warp_bilinear(image: np.ndarray, inverse: np.ndarray, output_shape: tuple[int, int]) -> np.ndarray:
    """Sample ``image`` (H, W[, C]) float64 at ``inverse @ (x, y, 1)`` of every output pixel (pixel centres at integer
    coordinates), bilinear, 0 where a neighbour lies outside the image (scikit-image ``warp`` order 1, constant 0)."""
    h, w = image.shape[:2]
    rows, cols = output_shape
    y, x = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    m = inverse
    z = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    sx = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / z
    sy = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / z
    r0, c0 = np.floor(sy), np.floor(sx)
    r1, c1 = np.ceil(sy), np.ceil(sx)
    dr, dc = sy - r0, sx - c0
    img = image.reshape(h, w, -1)

    def pick(r, c):
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        ri = np.where(inside, r, 0).astype(np.int64)
        ci = np.where(inside, c, 0).astype(np.int64)
        return np.where(inside[..., None], img[ri, ci], 0.0)

    dr, dc = dr[..., None], dc[..., None]
    top = (1 - dc) * pick(r0, c0) + dc * pick(r0, c1)
    bottom = (1 - dc) * pick(r1, c0) + dc * pick(r1, c1)
    out = (1 - dr) * top + dr * bottom
    return out.reshape((rows, cols) + image.shape[2:])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """``(aligned (size, size, 3) float64 RGB in [0, 1], inverse (3, 3) float64)`` of a uint8 RGB image: the
    similarity that maps the 5 landmarks onto the ArcFace template, bilinear, black outside the image. ``inverse``
    maps aligned pixel (x, y, 1) to image pixel coordinates."""
    template = arcface_template() * (size / 112.0) if size != 112 else arcface_template()
    tform = similarity_estimate(np.asarray(landmarks), template)
    inverse = np.linalg.inv(tform)
    pixels = np.asarray(image)
    pixels = pixels * (1.0 / 255) if pixels.dtype == np.uint8 else pixels.astype(np.float64)
    return warp_bilinear(pixels, inverse, (size, size)), inverse


# ---------------------------------------------------------------------------------------------------------------------
# source and driving
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class SourceInputs:
    """Everything the pipeline takes from the source image."""

    crop_bbox: list[int]            # x1, y1, x2, y2 of the square crop in the source (paste-back box)
    crop: Image.Image               # image_size x image_size RGB crop
    ref_img: torch.Tensor           # (3, S, S) float32 in [-1, 1] (VAE input)
    dino_image: torch.Tensor        # (3, 224, 224) float32 ImageNet-normalised (DINO input)
    arcface_face: np.ndarray        # (112, 112, 3) float64 RGB in [0, 1]
    crop_landmarks: np.ndarray      # (5, 2) landmarks on the crop


@dataclass
class DrivingInputs:
    """Per-frame motion inputs of the driving frames."""

    landmarks: np.ndarray           # (N, 5, 2) landmarks of the largest face, frame pixels
    head_box: list[int]             # x1, y1, x2, y2 square head crop from frame 0, used for every frame
    face_boxes: np.ndarray          # (N, 4) face box the expression hull is pushed toward (frame 0's for all)
    motion_boxes: np.ndarray        # (N, 4) enlarged landmark hull per frame
    motion_face: torch.Tensor       # (N, 3, M, M) float32 in [0, 1], expression-encoder input
    motion_pose: torch.Tensor       # (N, 3, M, M) float32 in [0, 1], head-pose input (before the x2+1)


def _detect_largest(detect: Detector, image: np.ndarray, what: str, index: int = 0,
                    total: int = 1) -> tuple[np.ndarray, np.ndarray]:
    boxes, landmarks = detect(image)
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        from ..face.track import NoFaceError

        raise NoFaceError([index], total, input_name=what, hint=NO_FACE_HINT)
    i = largest_face(boxes)
    return boxes[i], np.asarray(landmarks)[i]


def prepare_source(image: np.ndarray, detect: Detector, image_size: int = 512, dino_size: int = 224,
                   expand_ratio: float = 1.0, input_name: str = "source_image") -> SourceInputs:
    """Source-image inputs from a uint8 RGB image (two detector calls: the image, then the resized crop)."""
    image = np.asarray(image)
    box, _ = _detect_largest(detect, image, input_name)
    crop_bbox = square_crop_box(xywh_to_xyxy(box), expand_ratio, image.shape[0], image.shape[1])
    crop = crop_resize(Image.fromarray(image), crop_bbox, image_size)
    _, crop_landmarks = _detect_largest(detect, np.array(crop), f"{input_name} (its face crop)")
    aligned, _ = align_face(np.array(crop), crop_landmarks)
    return SourceInputs(crop_bbox=crop_bbox, crop=crop, ref_img=vae_input(crop), dino_image=dino_input(crop, dino_size),
                        arcface_face=aligned, crop_landmarks=np.asarray(crop_landmarks))


def prepare_driving(frames: Sequence[np.ndarray] | np.ndarray, detect: Detector, image_size: int = 512,
                    motion_size: int = 256, motion_scale: float = 0.45, expand_ratio: float = 1.0,
                    detections: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> DrivingInputs:
    """Motion inputs from uint8 RGB driving frames (one detector call per frame, or the largest face's
    ``(box xywh, landmarks)`` of every frame given as ``detections``)."""
    if detections is not None and len(detections) != len(frames):
        raise ValueError(f"{len(detections)} detections for {len(frames)} driving frames")
    landmarks, face_boxes, motion_boxes, faces, poses = [], [], [], [], []
    head_box = face_box = None
    for index, frame in enumerate(frames):
        frame = np.asarray(frame)
        if detections is None:
            box, lmk = _detect_largest(detect, frame, "driving frames", index, len(frames))
        else:
            box, lmk = detections[index]
        landmarks.append(np.asarray(lmk))
        if head_box is None:
            face_box = xywh_to_xyxy(box)
            head_box = square_crop_box(face_box, expand_ratio, frame.shape[0], frame.shape[1])
        hull = motion_crop_box(lmk, face_box, motion_scale)
        face_boxes.append(np.asarray(face_box, dtype=np.float64))
        motion_boxes.append(hull)
        face = Image.fromarray(square_centre_crop(frame, hull))
        faces.append(to_tensor(resize_shorter_side(face, motion_size)))
        head = crop_resize(Image.fromarray(frame), head_box, image_size)
        poses.append(to_tensor(resize_shorter_side(head, motion_size)))
    if head_box is None:
        raise ValueError("no driving frames")
    return DrivingInputs(landmarks=np.stack(landmarks), head_box=head_box, face_boxes=np.stack(face_boxes),
                         motion_boxes=np.stack(motion_boxes), motion_face=torch.stack(faces),
                         motion_pose=torch.stack(poses))


__all__ = ["ARCFACE_TEMPLATE_96", "DrivingInputs", "SourceInputs", "align_face", "arcface_template", "crop_resize",
           "dino_input", "largest_face", "motion_crop_box", "prepare_driving", "prepare_source",
           "resize_shorter_side", "similarity_estimate", "square_centre_crop", "square_crop_box", "to_tensor",
           "vae_input", "warp_bilinear"]
