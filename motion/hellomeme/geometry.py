"""Geometry of HelloMeme's face pre-processing (pure numpy + OpenCV; no model weights).

Everything here reproduces the official pre-processing numerically: the parity cases ``hellomeme.geom_*`` compare
the affine matrices, the uint8 network inputs (exactly) and the translations with the original implementation. To
get identical pixels the computations keep the original's dtypes: landmarks given as float32 are transformed in
float32 (``cv2.transform`` converts the matrix to the points' precision), box sizes and scales stay float32 and
matrices are float64. Scalar arithmetic follows NumPy 2's promotion rules (a Python number takes the dtype of the
NumPy value it meets), which the reference outputs were recorded with; it is written out with explicit casts
(:func:`_ftype`) so NumPy 1.x, which would promote float32 scalars to float64, gives the same numbers.

Conventions:

* ``landmarks`` are the toolkit's 222 points, ``(222, 2)`` (x, y) pixels, or ``(F, 222, 2)`` for a clip. Layout:
  contour 0-32, nose 33-47, eyebrows 48-73, left eye 74-95, right eye 96-117, mouth 118-181, left pupil 182-201,
  right pupil 202-221.
* Images are OpenCV ``(H, W, 3)`` uint8 in **BGR** unless a name says RGB.
* A "warp" is a ``(2, 3)`` float64 affine matrix mapping source pixels to the output crop (``cv2.warpAffine``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .cubic_resize import resize_cubic_u8

# ---- landmark indices and templates (222-point layout) -----------------------------------------------------------
LEFT_EYE_CORNER, RIGHT_EYE_CORNER = 74, 96

# Face-parts alignment (ARKit variant): nose bridge, the two outer eye corners, the two mouth corners, placed on a
# template given as fractions of the frame (x, y).
FACE_ALIGN_POINTS = (33, 74, 96, 133, 149)
FACE_ALIGN_TEMPLATE = np.array([[0.50951539, 0.40128625], [0.29259476, 0.40203411], [0.72196212, 0.40857479],
                                [0.63420714, 0.71678643], [0.38437035, 0.71723224]])
# The three face parts cut for CLIP: left eye + brow, right eye + brow, mouth.
FACE_PART_POINTS = (
    tuple(range(48, 60)) + tuple(range(74, 95)),
    tuple(range(61, 73)) + tuple(range(96, 117)),
    tuple(range(118, 149)),
)
FACE_PART_MARGIN = 1.2
FACE_PART_SIZE = 256
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PD-FGC: left pupil, right pupil, nose tip, mouth corners -> template (fractions of the 224 crop).
PDFGC_POINTS = (182, 202, 36, 149, 133)
PDFGC_TEMPLATE = np.array([[0.3843, 0.27], [0.62, 0.2668], [0.503, 0.4185], [0.406, 0.5273], [0.5977, 0.525]])
PDFGC_SIZE = 224

# Face crops of the ONNX models.
LANDMARK_INPUT_SIZE, LANDMARK_EXPAND = 128, 0.15
THREEDMM_INPUT_SIZE, THREEDMM_EXPAND = 224, 0.35
ARKIT_INPUT_SIZE, ARKIT_EXPAND = 224, 0.15

# 3DMM coefficient layout (1201 values) and camera.
THREEDMM_ID, THREEDMM_EXP, THREEDMM_TEX, THREEDMM_ANGLES, THREEDMM_GAMMA, THREEDMM_TRANS = 526, 203, 439, 3, 27, 3
THREEDMM_ANGLES_START = THREEDMM_ID + THREEDMM_EXP + THREEDMM_TEX  # 1168
THREEDMM_CAMERA_Z = -0.4
THREEDMM_CAMERA_FOCAL = 386.2879122887948
THREEDMM_USED_FOCAL = -5.0 / THREEDMM_CAMERA_Z * THREEDMM_CAMERA_FOCAL  # 4828.598903609935

# crop_and_resize
CROP_FACE_SCALE = 3.0
CROP_SHIFT_UP = 0.115
CROP_SIZE = 512

# Coefficient tokens (scalars -> sinusoidal timestep encodings)
ARKIT_TOKEN_SCALE = 500.0
PDFGC_TOKEN_SCALE = 20.0


# ---- small helpers -------------------------------------------------------------------------------------------------
def _ftype(a) -> type:
    """The NumPy scalar type in which arithmetic on values of ``a`` happens: its float dtype (float32 stays
    float32), float64 for integers and Python numbers."""
    dt = np.asarray(a).dtype
    return dt.type if np.issubdtype(dt, np.floating) else np.float64


def transform_points(points: np.ndarray, matrix: np.ndarray, invert: bool = False) -> np.ndarray:
    """``(N, 2)`` points through a ``(2, 3)`` affine (its inverse with ``invert``) -> ``(N, 2)``.

    Uses ``cv2.transform``, which computes in the points' precision (float32 points use a float32 copy of the
    matrix), exactly like the original toolkit.
    """
    if invert:
        matrix = cv2.invertAffineTransform(matrix)
    pts = np.asarray(points)
    return cv2.transform(pts.reshape(-1, 1, 2), matrix).reshape(-1, 2)


def landmark_extent(points: np.ndarray):
    """``(x_min, y_min, x_max, y_max)`` of ``(N, 2)`` points, as scalars of the points' dtype."""
    return points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()


def eye_corner_radians(points: np.ndarray):
    """Roll of the face in radians: the angle of the line from landmark 74 to landmark 96 (outer eye corners),
    ``atan2(dy, dx + 1e-8)``, in the points' dtype (float32 for float32 landmarks)."""
    t = _ftype(points)
    left, right = points[LEFT_EYE_CORNER], points[RIGHT_EYE_CORNER]
    return np.arctan2(t(right[1] - left[1]), t(right[0] - left[0]) + t(0.00000001))


def eye_corner_angle(points: np.ndarray):
    """:func:`eye_corner_radians` in degrees (what the alignment warps take)."""
    return np.rad2deg(eye_corner_radians(points))


@dataclass
class AlignWarp:
    """An alignment crop: ``matrix`` (2, 3) float64 source -> crop, the rotation centre (landmark-box centre) in
    source pixels, the rotation ``angle`` in degrees (OpenCV convention, counter-clockwise) and the ``scale``."""

    matrix: np.ndarray
    centre_x: float
    centre_y: float
    angle: float
    scale: float


def box_warp(box: Sequence[float], angle: float, size: int, expand: float = 0.15) -> np.ndarray:
    """Warp of a face box ``(x0, y0, x1, y1)`` into a ``size`` square: rotate by ``angle`` degrees about the box
    centre, scale so the box's larger side fills ``(1 - expand)`` of the square, box centre -> square centre.
    Returns the (2, 3) float64 matrix."""
    t = _ftype(np.asarray(box))
    x0, y0, x1, y1 = (t(v) for v in box[:4])
    cx, cy = (x0 + x1) / t(2), (y0 + y1) / t(2)
    scale = t(size) / max(x1 - x0, y1 - y0) * t(1 - expand)
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(angle), float(scale))
    m[:, 2] += np.array([t(size / 2) - cx, t(size / 2) - cy])
    return m


def landmark_warp(points: np.ndarray, angle: float, size: int, expand: float) -> AlignWarp:
    """Alignment warp of a face given its landmarks (``(N, 2)``) into a ``size`` square.

    1. rotate the landmarks by ``angle`` degrees about their box centre and measure the rotated box;
    2. scale so that box's larger side fills ``(1 - expand)`` of the square (same rotation centre);
    3. translate so the centre of the rotated-and-scaled landmarks' box lands on the square's centre.
    """
    pts = np.asarray(points)
    t = _ftype(pts)
    x0, y0, x1, y1 = landmark_extent(pts)
    cx, cy = (x0 + x1) / t(2), (y0 + y1) / t(2)
    centre = (float(cx), float(cy))
    rx0, ry0, rx1, ry1 = landmark_extent(transform_points(pts, cv2.getRotationMatrix2D(centre, float(angle), 1.0)))
    scale = t(size) / max(rx1 - rx0, ry1 - ry0) * t(1 - expand)
    m = cv2.getRotationMatrix2D(centre, float(angle), float(scale))
    sx0, sy0, sx1, sy1 = landmark_extent(transform_points(pts, m))
    m[:, 2] += np.array([t(size / 2) - (sx0 + sx1) / t(2), t(size / 2) - (sy0 + sy1) / t(2)])
    return AlignWarp(matrix=m, centre_x=cx, centre_y=cy, angle=angle, scale=scale)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst`` (both ``(N, D)``),
    after Umeyama (PAMI 1991). Returns the ``(D + 1, D + 1)`` float64 homogeneous matrix (NaN when degenerate).

    The rotation is built from the SVD ``A = U S Vh`` of the cross-covariance as ``U diag(d) Vh^T`` with
    ``d = (1, ..., det-sign)``, i.e. the composition HelloMeme's alignment uses (it treats numpy's ``Vh`` as ``V``).
    For point sets related by a near-similarity (any real face against its template) LAPACK returns a ``Vh`` for
    which this equals the textbook ``U diag(d) Vh``; keeping the original composition makes arbitrary inputs match
    the reference too. A rank-deficient (collinear) problem uses ``U Vh`` with the reflection guard.
    """
    src = np.asarray(src)  # float32 sources stay float32 (means, variance), as in the original
    dst = np.asarray(dst, np.float64)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    t = np.eye(dim + 1)
    u, s, vh = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vh) > 0:
            rot = u @ vh
        else:
            d_flip = d.copy()
            d_flip[-1] = -1
            rot = u @ np.diag(d_flip) @ vh
    else:
        rot = u @ np.diag(d) @ vh.T
    scale = _ftype(src)(1.0) / src_c.var(axis=0).sum() * (s @ d) if with_scale else 1.0
    t[:dim, dim] = dst_mean - scale * (rot @ src_mean)
    t[:dim, :dim] = rot * scale
    return t


# ---- affine warps (reference arithmetic) -------------------------------------------------------------------------------
# The HelloMeme reference outputs were recorded with OpenCV 5, whose warpAffine interpolates in float32 from
# unquantised source coordinates; OpenCV 4.x quantises coordinates to 1/32 pixel and uses fixed-point weights, which
# moves many pixels of a warped crop by 1-8 grey levels. So the warps are computed here, in numpy, with the float32
# arithmetic of the reference (fused multiply-adds emulated exactly in float64): the network inputs are then the same
# whichever OpenCV is installed. Border: constant 0 (what every HelloMeme warp uses).
_SIMD_BLOCK = 16  # bilinear: columns are processed in blocks of 16; the last partial block uses scalar arithmetic
_CUBIC_A = np.float32(-0.75)


def _fma32(a, b, c) -> np.ndarray:
    """float32 ``a * b + c`` with a single rounding (the product of two float32 is exact in float64)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine (float64), as OpenCV computes it (a zero determinant gives a zero matrix)."""
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[1, 1] * det, m[0, 0] * det
    a12, a21 = m[0, 1] * -det, m[1, 0] * -det
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    return np.array([[a11, a12, b1], [a21, a22, b2]])


def _source_coords(inv: np.ndarray, width: int, height: int, interpolation: str):
    """float32 source coordinates ``(sx, sy)`` (height, width) of every output pixel."""
    m = inv.astype(np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    row_x = (ys * m[0, 1]) + m[0, 2]  # float32
    row_y = (ys * m[1, 1]) + m[1, 2]
    if interpolation == "cubic":
        return (m[0, 0] * xs) + row_x, (m[1, 0] * xs) + row_y
    sx, sy = _fma32(m[0, 0], xs, row_x), _fma32(m[1, 0], xs, row_y)
    tail = (width // _SIMD_BLOCK) * _SIMD_BLOCK
    if tail < width:
        xt = xs[:, tail:]
        sx[:, tail:] = _fma32(xt, m[0, 0], ys * m[0, 1]) + m[0, 2]
        sy[:, tail:] = _fma32(xt, m[1, 0], ys * m[1, 1]) + m[1, 2]
    return sx, sy


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys cubic weights (A = -0.75) of the 4 taps at offsets -1, 0, 1, 2 for fractions ``t`` (float32)."""
    one = np.float32(1)
    u = one - t
    w0 = _CUBIC_A * (t * (u * u))
    w3 = _CUBIC_A * ((t * t) * u)
    w1 = _fma32(_fma32(_CUBIC_A + np.float32(2), t, -(_CUBIC_A + np.float32(3))), t * t, one)
    w2 = ((one - w0) - w1) - w3
    return [w0, w1, w2, w3]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                interpolation: str = "linear") -> np.ndarray:
    """``cv2.warpAffine(image, matrix, size, flags=INTER_LINEAR | INTER_CUBIC)`` with a constant 0 border, computed
    with the reference's float32 arithmetic (see above). ``image`` ``(H, W)`` or ``(H, W, C)`` uint8 or float32;
    ``matrix`` (2, 3) maps source to output; ``size`` is ``(width, height)``. uint8 results are rounded half to even
    and saturated."""
    if interpolation not in ("linear", "cubic"):
        raise ValueError(f"interpolation must be 'linear' or 'cubic', got {interpolation!r}")
    img = np.asarray(image)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    width, height = int(size[0]), int(size[1])
    h, w = img.shape[:2]
    sx, sy = _source_coords(invert_affine(matrix), width, height, interpolation)
    if not (np.isfinite(sx).all() and np.isfinite(sy).all()):  # a degenerate matrix: nothing maps inside
        bad = ~(np.isfinite(sx) & np.isfinite(sy))
        sx, sy = np.where(bad, np.float32(-1e6), sx), np.where(bad, np.float32(-1e6), sy)
    ix, iy = np.floor(sx), np.floor(sy)
    fx, fy = sx - ix, sy - iy  # exact in float32
    pad = 2
    src = np.zeros((h + 2 * pad, w + 2 * pad, img.shape[2]), np.float32)
    src[pad:pad + h, pad:pad + w] = img
    # Indices far outside land on the zero padding (clipped), which is the constant border.
    big = np.float32(1 << 30)
    ixp = np.clip(np.clip(ix, -big, big).astype(np.int64) + pad, 0, w + 2 * pad - 1)
    iyp = np.clip(np.clip(iy, -big, big).astype(np.int64) + pad, 0, h + 2 * pad - 1)

    def tap(dy: int, dx: int) -> np.ndarray:
        yy = np.clip(iyp + dy, 0, h + 2 * pad - 1)
        xx = np.clip(ixp + dx, 0, w + 2 * pad - 1)
        inside = (iy + dy >= 0) & (iy + dy < h) & (ix + dx >= 0) & (ix + dx < w)
        return np.where(inside[..., None], src[yy, xx], np.float32(0))

    if interpolation == "linear":
        ax, ay = fx[..., None], fy[..., None]
        p00, p01, p10, p11 = tap(0, 0), tap(0, 1), tap(1, 0), tap(1, 1)
        top = _fma32(ax, p01 - p00, p00)
        bottom = _fma32(ax, p11 - p10, p10)
        out = _fma32(ay, bottom - top, top)
    else:
        wx = [v[..., None] for v in _cubic_weights(fx)]
        wy = [v[..., None] for v in _cubic_weights(fy)]
        out = None
        for j in range(4):
            row = wx[0] * tap(j - 1, -1)
            for i in range(1, 4):
                row = _fma32(wx[i], tap(j - 1, i - 1), row)
            out = wy[0] * row if out is None else _fma32(wy[j], row, out)
    if np.asarray(image).dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


# ---- crop of the reference / driving frames --------------------------------------------------------------------------
def clip_crop_box(landmarks: np.ndarray, height: int, width: int, face_scale: float = CROP_FACE_SCALE,
                  shift_up: float = CROP_SHIFT_UP) -> tuple[np.ndarray, np.ndarray]:
    """One square crop box for a whole clip: ``(top_left, bottom_right)`` int arrays (x, y), exclusive end.

    ``landmarks`` ``(F, N, 2)``. Side = ``min(face_scale x the larger side of the MEAN landmark box, min(H, W) - 1)``,
    centred on the union of all frames' landmark boxes and moved up by ``shift_up x side``, then shifted back inside
    the frame; finally squared to ``floor`` of its smaller side with int() truncation of the corners.
    """
    lm = np.asarray(landmarks)
    t = _ftype(lm)
    tl_f, br_f = lm.min(axis=1), lm.max(axis=1)
    mean_wh = np.mean(br_f - tl_f, axis=0)
    tl, br = tl_f.min(axis=0), br_f.max(axis=0)
    side = max(mean_wh) * t(face_scale)
    limit_side = min(height, width) - 1
    if limit_side < side:  # min(side, limit) keeping the type of the winner (a Python int meets arrays weakly)
        side = limit_side
    shift = side * t(shift_up) if isinstance(side, np.floating) else t(side * shift_up)
    half = side * t(0.5) if isinstance(side, np.floating) else t(side * 0.5)
    centre = (tl + br) * t(0.5)
    centre[1] = centre[1] - shift
    lo, hi = centre - half, centre + half
    for axis in (0, 1):  # left/top first, then right/bottom
        if lo[axis] < 0:
            hi[axis] = hi[axis] - lo[axis]
            lo[axis] = 0
    for axis, limit in ((0, width), (1, height)):
        if hi[axis] >= limit:
            lo[axis] = lo[axis] - ((hi[axis] - t(limit)) + t(1))
            hi[axis] = limit - 1
    mid = (lo + hi) * t(0.5)
    square = np.floor(hi - lo).min()
    return (mid - square * t(0.5)).astype(int), (mid + square * t(0.5)).astype(int)


def crop_and_resize(frames, landmarks: np.ndarray, size: int = CROP_SIZE, crop: bool = True,
                    extent_points: Sequence[int] | None = None):
    """Crop a clip to one square face box (see :func:`clip_crop_box`) and resize to ``size`` (bicubic).

    ``frames``: ``(F, H, W, 3)`` uint8 (any channel order) or a list of such frames; ``landmarks``: ``(F, N, 2)``.
    With ``crop=False`` the whole frame is resized to ``size`` x ``size`` (aspect ratio NOT kept).
    ``extent_points`` restricts the points that size and place the box (default: all).
    Returns ``(frames (F, size, size, 3) uint8, landmarks (F, N, 2) float64 in the output frame, box)`` where
    ``box`` is ``(x0, y0, x1, y1)`` ints of the source region (the whole frame when ``crop=False``).
    """
    frames = np.stack(list(frames), axis=0) if not isinstance(frames, np.ndarray) else frames
    lm = np.asarray(landmarks)
    h, w = frames.shape[1:3]
    if crop:
        tl, br = clip_crop_box(lm if extent_points is None else lm[:, list(extent_points)], h, w)
        regions = [np.ascontiguousarray(f[tl[1]:br[1], tl[0]:br[0]]) for f in frames]
        out_lm = (lm - tl) * (size / (br - tl))
        box = (int(tl[0]), int(tl[1]), int(br[0]), int(br[1]))
    else:
        regions = list(frames)
        out_lm = lm * (size / w, size / h)
        box = (0, 0, int(w), int(h))
    out = np.stack([resize_cubic_u8(r, (size, size)) for r in regions], axis=0)
    return out, out_lm, box


# ---- 3DMM head pose ----------------------------------------------------------------------------------------------------
def threedmm_input(image_bgr: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, AlignWarp]:
    """The 3DMM network's face crop: ``(224, 224, 3)`` uint8 **RGB** (no rotation, expand 0.35, bilinear) and its
    warp. The network input is this crop ``/ 255`` as ``(1, 3, 224, 224)`` float32."""
    warp = landmark_warp(landmarks, 0, THREEDMM_INPUT_SIZE, THREEDMM_EXPAND)
    crop = warp_affine(image_bgr, warp.matrix, (THREEDMM_INPUT_SIZE, THREEDMM_INPUT_SIZE))
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), warp


def threedmm_angles_and_crop_translation(coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the ``(1, 1201)`` coefficient vector (id 526 | exp 203 | tex 439 | angles 3 | gamma 27 | trans 3) into
    ``angles`` (1, 3) (x, y, z radians) and the crop-camera translation (1, 3)."""
    coeffs = np.asarray(coeffs)
    a0 = THREEDMM_ANGLES_START
    return coeffs[:, a0:a0 + 3], coeffs[:, a0 + THREEDMM_ANGLES + THREEDMM_GAMMA:]


def crop_to_full_translation(crop_trans: np.ndarray, crop_centre, scale, full_centre,
                             focal: float = THREEDMM_USED_FOCAL) -> np.ndarray:
    """Translation ``(3,)`` of the 3DMM crop camera converted to the full image's camera (float32).

    ``bs = 2 focal / scale / t_z``; ``x = t_x - 2 (c_x - W/2) / bs``; ``y = t_y + 2 (c_y - H/2) / bs``;
    ``z = t_z scale`` with ``(c_x, c_y)`` the crop's centre in the image and ``scale`` the crop scale.
    """
    t = _ftype(crop_trans)
    bs = t(2 * focal) / t(scale) / crop_trans[2]
    x = crop_trans[0] - t(2) * (t(crop_centre[0]) - t(full_centre[0])) / bs
    y = crop_trans[1] + t(2) * (t(crop_centre[1]) - t(full_centre[1])) / bs
    z = crop_trans[2] * t(scale)
    return np.array([x, y, z], dtype=np.float32)


def threedmm_head_pose(coeffs: np.ndarray, warp: AlignWarp, image_hw: tuple[int, int]):
    """``(angles (1, 3), translation (1, 3) float32)`` of the head in an ``image_hw`` image from the 3DMM output
    ``coeffs`` (1, 1201) computed on the crop made with ``warp``."""
    angles, crop_trans = threedmm_angles_and_crop_translation(coeffs)
    h, w = image_hw
    full = crop_to_full_translation(crop_trans[0], (warp.centre_x, warp.centre_y), warp.scale, (w * 0.5, h * 0.5))
    return angles, full[np.newaxis, :]


# ---- ARKit blendshapes ---------------------------------------------------------------------------------------------------
def arkit_input(image_bgr: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ARKit blendshape network's crop: ``(224, 224, 3)`` uint8 **BGR**, rotated upright by the eye-corner angle,
    expand 0.15, bilinear; and its (2, 3) warp. Network input = crop ``/ 255`` as (1, 3, 224, 224), no mean/std."""
    m = landmark_warp(landmarks, eye_corner_angle(np.asarray(landmarks)), ARKIT_INPUT_SIZE, ARKIT_EXPAND).matrix
    return warp_affine(image_bgr, m, (ARKIT_INPUT_SIZE, ARKIT_INPUT_SIZE)), m


# ---- face parts for CLIP (ARKit variant) ---------------------------------------------------------------------------------
def face_align_matrix(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(2, 3) similarity putting landmarks [33, 74, 96, 133, 149] on the face template scaled to ``width x height``."""
    src = np.asarray(landmarks)[list(FACE_ALIGN_POINTS), :]
    return umeyama_similarity(src, FACE_ALIGN_TEMPLATE * (width, height), True)[0:2]


def face_part_matrices(aligned_landmarks: np.ndarray, size: int = FACE_PART_SIZE,
                       margin: float = FACE_PART_MARGIN) -> np.ndarray:
    """(3, 2, 3) crop matrices of the three face parts, ONE per part for the whole clip.

    ``aligned_landmarks`` ``(F, 222, 2)`` (after :func:`face_align_matrix`). For each part: the box over all frames
    of the part's points, side = ``margin`` x its larger side; scale ``size / side`` about the box centre, the
    centre mapped to the crop centre (no rotation).
    """
    out = []
    t = _ftype(aligned_landmarks)
    for region in FACE_PART_POINTS:
        pts = aligned_landmarks[:, list(region), :]
        lo, hi = pts.min(axis=1).min(axis=0), pts.max(axis=1).max(axis=0)
        centre = (lo + hi) * t(0.5)
        side = max(hi - lo) * t(margin)
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0, float(t(size) / side))
        m[:, 2] += t(size * 0.5) - centre
        out.append(m)
    return np.stack(out, axis=0)


def face_part_crops(images_bgr, landmarks: np.ndarray, size: int = FACE_PART_SIZE):
    """The CLIP inputs of the three face parts of every frame.

    ``images_bgr`` ``(F, H, W, 3)`` uint8 BGR (the 512 crops), ``landmarks`` ``(F, 222, 2)``.
    Each frame is aligned to the face template (:func:`face_align_matrix`, bilinear, output ``W x H``), each part is
    cut with the clip's fixed part box (:func:`face_part_matrices`, ``size`` square, bilinear), blurred (Gaussian
    5x5, sigma from the kernel), resized to 224 (bicubic) and converted to RGB.
    Returns ``(crops (F, 3, 224, 224, 3) uint8 RGB, align (F, 2, 3), parts (3, 2, 3))``.
    """
    images = list(images_bgr)
    h, w = images[0].shape[:2]
    align, aligned_imgs, aligned_lms = [], [], []
    for img, lm in zip(images, landmarks):
        m = face_align_matrix(lm, w, h)
        align.append(m)
        aligned_imgs.append(warp_affine(img, m, (w, h)))
        aligned_lms.append(transform_points(np.asarray(lm).astype(np.float32), m))
    parts = face_part_matrices(np.stack(aligned_lms, axis=0), size)
    crops = np.empty((len(images), len(parts), CLIP_SIZE, CLIP_SIZE, 3), np.uint8)
    for p, m in enumerate(parts):
        for f, img in enumerate(aligned_imgs):
            part = cv2.GaussianBlur(warp_affine(img, m, (size, size)), (5, 5), 0)
            part = resize_cubic_u8(part, (CLIP_SIZE, CLIP_SIZE))
            crops[f, p] = cv2.cvtColor(part, cv2.COLOR_BGR2RGB)
    return crops, np.stack(align, axis=0), parts


def clip_normalize(rgb_u8: np.ndarray):
    """uint8 RGB ``(..., 224, 224, 3)`` -> float32 torch tensor ``(..., 3, 224, 224)`` with CLIP's mean/std
    (computed in float64 from ``u8 * (1/255)`` as the original)."""
    import torch

    x = (np.asarray(rgb_u8) * 0.00392156862745098 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.from_numpy(np.moveaxis(x, -1, -3).copy()).to(torch.float32)


# ---- PD-FGC face warp -----------------------------------------------------------------------------------------------------
def pdfgc_warp(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = PDFGC_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """PD-FGC's face crop: similarity of landmarks [182, 202, 36, 149, 133] (pupils, nose, mouth corners) onto the
    template x ``size``, bicubic, black border. Returns ``(crop (size, size, 3) uint8 BGR, matrix (2, 3))``."""
    return pdfgc_warp_points(image_bgr, np.asarray(landmarks)[list(PDFGC_POINTS)], size)


def pdfgc_warp_points(image_bgr: np.ndarray, points5: np.ndarray, size: int = PDFGC_SIZE):
    """:func:`pdfgc_warp` from the five points themselves ``(5, 2)``: left pupil, right pupil, nose tip, mouth
    corners (image left, then right)."""
    m = umeyama_similarity(np.asarray(points5), PDFGC_TEMPLATE * size, True)[0:2]
    return warp_affine(image_bgr, m, (size, size), "cubic"), m


def bgr_to_signed_rgb(image_bgr: np.ndarray):
    """uint8 BGR ``(H, W, 3)`` -> float32 torch ``(3, H, W)`` RGB in [-1, 1] (``x / 255 * 2 - 1`` in float64)."""
    import torch

    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) / 255. * 2 - 1
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy()).to(torch.float32)


# ---- coefficient tokens ------------------------------------------------------------------------------------------------------
def coefficient_tokens(coeffs, dim: int, multiplier: float):
    """Each scalar coefficient -> its own sinusoidal "timestep" token: ``(..., C)`` -> float32 ``(..., C, dim)``.

    The formula lives in :func:`...layers.embeddings.coefficient_tokens` (what the control networks compute); this
    keeps the coefficient axes (ARKit x500, PD-FGC x20).
    """
    import torch

    from ...layers.embeddings import coefficient_tokens as tokens

    c = torch.as_tensor(coeffs).to(torch.float32)
    return tokens(c, dim, multiplier).reshape(*c.shape, dim)
