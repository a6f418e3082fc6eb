"""HelloMeme's head-pose control image ("condition"): a small square in front of the camera, rotated and moved like
the head, projected and drawn as four coloured 15-px edges on black.

The drawing is pixel-exact with the original ``gen_control_heatmaps`` (as recorded with a current OpenCV): the
computation keeps its dtypes (sines of float32 angles, float64 geometry), the corners are truncated to int32, and
edges leaving the image are clipped the way OpenCV >= 4.13 clips thick lines (:func:`draw_thick_line`).
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

SQUARE_HALF_SIDE = 0.05
SQUARE_CORNERS = np.array([[-1, -1, 0], [-1, 1, 0], [1, 1, 0], [1, -1, 0]]) * SQUARE_HALF_SIDE  # (4, 3)
POSE_FOCAL = 4828.598903609935  # 5 / 0.4 x 386.2879122887948, the 3DMM's full-image focal length
FOCAL_SCALE = 0.05  # the focal length and the depth are both scaled by this
EDGE_THICKNESS = 15
# Edge i goes from corner i to corner (i + 1) % 4; colours in BGR (the image is converted to RGB at the end).
EDGE_COLOURS_BGR = ((0, 255, 0), (255, 0, 0), (0, 0, 255), (255, 0, 255))


def rotation_matrices(angles: np.ndarray) -> np.ndarray:
    """``(N, 3)`` Euler angles (x, y, z radians) -> ``(N, 3, 3)`` float64 ``(Rz Ry Rx)^T`` (for row vectors:
    ``p_rotated = p @ R``). Sines/cosines are taken in the angles' dtype, as the original does."""
    angles = np.asarray(angles)
    sx, sy, sz = np.sin(angles[:, 0]), np.sin(angles[:, 1]), np.sin(angles[:, 2])
    cx, cy, cz = np.cos(angles[:, 0]), np.cos(angles[:, 1]), np.cos(angles[:, 2])
    n = angles.shape[0]
    rx, ry, rz = (np.tile(np.eye(3), (n, 1, 1)) for _ in range(3))
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = cx, -sx, sx, cx
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = cy, sy, -sy, cy
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = cz, -sz, sz, cz
    return np.matmul(np.matmul(rz, ry), rx).transpose(0, 2, 1)


def project_points(points: np.ndarray, width: int, height: int, focal: float) -> np.ndarray:
    """Perspective projection of ``(N, P, 3)`` camera points with the z axis flipped (the camera looks down -z):
    ``u = f X / -Z + W/2``, ``v = f Y / -Z + H/2`` -> ``(N, P, 2)`` float64 (v not yet flipped)."""
    n = points.shape[0]
    k = np.zeros((n, 3, 3))
    k[:, 0, 0] = focal
    k[:, 1, 1] = focal
    k[:, 2, 2] = 1.
    k[:, 0, 2] = width * 0.5
    k[:, 1, 2] = height * 0.5
    flip_z = np.array([[1, 0, 0], [0, 1, 0], [0, 0, -1]])[np.newaxis].repeat(n, 0)
    homog = np.matmul(np.matmul(points, flip_z), k.transpose(0, 2, 1))
    return homog[:, :, :2] / homog[:, :, 2:]


def pose_square_corners(angles: np.ndarray, translation: np.ndarray, width: int, height: int,
                        focal: float = POSE_FOCAL) -> np.ndarray:
    """Image corners ``(4, 2)`` float64 (x, y; y down) of the pose square for one frame.

    ``angles`` (1, 3) radians, ``translation`` (1, 3): the square (half side 0.05, z = 0) is rotated by
    ``(Rz Ry Rx)^T``, moved by the translation with its z scaled by 0.05, projected with focal ``0.05 focal``.
    """
    rot = rotation_matrices(np.asarray(angles).reshape(1, 3))
    trans = np.array(translation, copy=True).reshape(1, 3)
    trans[0, 2] *= FOCAL_SCALE
    moved = np.matmul(SQUARE_CORNERS[np.newaxis], rot) + trans.reshape(-1, 1, 3)
    uv = project_points(moved, width, height, focal * FOCAL_SCALE)
    return np.stack([uv[:, :, 0], height - uv[:, :, 1]], axis=2)[0]


def _trunc_div(num: float, den: float) -> int:
    return int(math.trunc(num / den))


def clip_segment(p0, p1, width: int, height: int):
    """Cohen-Sutherland clipping of the integer segment ``p0``-``p1`` to ``[0, width) x [0, height)``, with OpenCV's
    arithmetic (``clipLine``: double division, truncation). Returns ``(inside, p0, p1)``."""
    (x1, y1), (x2, y2) = (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1]))
    right, bottom = width - 1, height - 1
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += _trunc_div(float(a - y1) * (x2 - x1), y2 - y1)
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += _trunc_div(float(a - y2) * (x2 - x1), y2 - y1)
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += _trunc_div(float(a - x1) * (y2 - y1), x2 - x1)
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += _trunc_div(float(a - x2) * (y2 - y1), x2 - x1)
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, (x1, y1), (x2, y2)


def draw_thick_line(img: np.ndarray, p0, p1, colour, thickness: int) -> None:
    """``cv2.line`` (8-connected) as OpenCV >= 4.13 draws it: the segment is first clipped to the image grown by
    ``thickness`` on every side (older OpenCV skips that step, which moves a few edge pixels of lines that leave
    the image). Clipping here makes every OpenCV version draw the same pixels."""
    h, w = img.shape[:2]
    m = int(thickness)
    inside, a, b = clip_segment((p0[0] + m, p0[1] + m), (p1[0] + m, p1[1] + m), w + 2 * m, h + 2 * m)
    if inside:
        cv2.line(img, (a[0] - m, a[1] - m), (b[0] - m, b[1] - m), colour, thickness)


def draw_pose_square(size: int, corners: np.ndarray) -> np.ndarray:
    """Black ``(size, size, 3)`` uint8 BGR image with the square's 4 edges (corners truncated to int32, 8-connected
    lines, 15 px, colours :data:`EDGE_COLOURS_BGR`)."""
    pts = np.asarray(corners).astype(np.int32)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    for i, colour in enumerate(EDGE_COLOURS_BGR):
        a, b = pts[i], pts[(i + 1) % 4]
        draw_thick_line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), colour, EDGE_THICKNESS)
    return img


def frame_translations(translations: Sequence[np.ndarray], ref_translation: np.ndarray,
                       trans_ratio: float) -> list[np.ndarray]:
    """Per-frame translation of the drawn square: ``ref + (t_f - t_0) * trans_ratio`` (relative motion of the
    driving head, scaled, around the reference head's position)."""
    first = translations[0]
    return [ref_translation + (t - first) * trans_ratio for t in translations]


def pose_images(angles: Sequence[np.ndarray], translations: Sequence[np.ndarray], ref_translation: np.ndarray,
                size: int = 512, trans_ratio: float = 0.0):
    """The control images of a clip.

    ``angles``/``translations``: one ``(1, 3)`` array per frame (3DMM outputs); ``ref_translation`` (1, 3).
    Returns ``(condition, corners)``: ``condition`` float32 torch ``(3, F, size, size)`` RGB with values -1/+1
    (the pipelines take ``condition[None]``, i.e. ``(1, 3, F, S, S)``), ``corners`` ``(F, 4, 2)`` float64.
    """
    import torch

    images, corners = [], []
    for ang, t in zip(angles, frame_translations(list(translations), ref_translation, trans_ratio)):
        c = pose_square_corners(ang, t, size, size)
        rgb = cv2.cvtColor(draw_pose_square(size, c), cv2.COLOR_BGR2RGB) / 255. * 2 - 1
        images.append(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).to(torch.float32))
        corners.append(c)
    return torch.stack(images, dim=1), np.stack(corners, axis=0)


def negative_pose_image(size: int = 512, frames: int = 1):
    """The CFG-negative control image: all -1, ``(1, 3, frames, size, size)`` float32."""
    import torch

    return -torch.ones(1, 3, frames, size, size)
