"""Bicubic uint8 resize that gives the same pixels on every x86 CPU.

HelloMeme's pre-processing resizes its uint8 face crops with ``cv2.resize(..., INTER_CUBIC)``. In the pip wheels of
OpenCV that call runs Intel IPP, whose uint8 kernel is chosen by the CPU: the AVX-512 kernel (the one the original
outputs were recorded with) and the AVX2 / SSE4.2 kernels round a few near-tie pixels differently (2 of the 786 432
values of a 512 x 512 crop, typically). Parity asks for exact pixels, and users' results should not depend on their
CPU, so this module computes what the AVX-512 kernel computes, in NumPy:

* coefficients: IPP's float32 cubic weights (B = 0, C = 0.75, i.e. OpenCV's A = -0.75) for each output column/row,
  read from OpenCV's float32 resize, which is the same on every CPU level (an impulse per tap, see
  :func:`cubic_taps`); source indices are clamped (replicated border) as OpenCV does;
* horizontal pass first, into float32: ``acc = p0*w0; acc = fma(p1, w1, acc); acc = fma(p2, w2, acc);
  acc = fma(p3, w3, acc)``;
* vertical pass: ``fma(q0, w0, q1*w1) + fma(q2, w2, q3*w3)`` in float32, rounded half to even and saturated.

A fused multiply-add of float32 values is computed in float64 (the product of two float32 is exact there) and
rounded back. Checked against the AVX-512 kernel on 12.7 million random pixels (0 differences in the interior;
the rare exact ties on the replicated border can still differ) and on both recorded HelloMeme cases.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_F32, _F64 = np.float32, np.float64
_PHASES = 5  # impulses this far apart never share a 4-tap window


@lru_cache(maxsize=64)
def cubic_taps(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``(n_dst, 4)`` (clamped to the image) and float32 weights ``(n_dst, 4)`` of one axis.

    The weights are OpenCV's own: a float32 image with a unit impulse every ``_PHASES`` columns is resized along
    that axis only (4 rows, so OpenCV takes its optimised path; the other axis is the identity, whose weights are
    exactly 0, 1, 0, 0), and the output at each column is the weight of the tap that sees the impulse. Taps that
    fall outside the image land on the edge pixel, whose response then holds their summed weight.
    """
    import cv2

    centre = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
    first = np.floor(centre).astype(np.int64) - 1
    idx = first[:, None] + np.arange(4)[None]                  # (n_dst, 4), may leave the image
    weights = np.zeros((n_dst, 4), _F32)
    for phase in range(_PHASES):
        impulses = np.zeros((4, n_src), _F32)
        columns = np.arange(phase, n_src, _PHASES)
        impulses[:, columns] = 1.0
        response = cv2.resize(impulses, (n_dst, 4), interpolation=cv2.INTER_CUBIC)[1]
        for k in range(4):
            hit = np.isin(idx[:, k], columns)
            weights[hit, k] = response[hit]
    idx = np.clip(idx, 0, n_src - 1)
    idx.flags.writeable = False
    weights.flags.writeable = False
    return idx, weights


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (a.astype(_F64) * b.astype(_F64) + c.astype(_F64)).astype(_F32)


def resize_cubic_u8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)`` for uint8 ``(H, W)`` or ``(H, W, C)`` images,
    computed as OpenCV's AVX-512 IPP kernel does on any CPU. ``size`` is ``(width, height)`` as in OpenCV."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"resize_cubic_u8 takes (H, W) or (H, W, C) uint8 images, got {image.dtype} {image.shape}")
    out_w, out_h = int(size[0]), int(size[1])
    src = image.astype(_F32)
    if src.ndim == 2:
        src = src[..., None]
    cols, wx = cubic_taps(src.shape[1], out_w)
    rows, wy = cubic_taps(src.shape[0], out_h)

    # horizontal: (H, W, C) -> (H, out_w, C), a sequential fma chain over the four taps
    wxk = [wx[None, :, k, None] for k in range(4)]
    acc = (src[:, cols[:, 0]] * wxk[0]).astype(_F32)
    for k in (1, 2, 3):
        acc = _fma(src[:, cols[:, k]], wxk[k], acc)

    # vertical: (H, out_w, C) -> (out_h, out_w, C), two fma pairs added
    wyk = [wy[:, k, None, None] for k in range(4)]
    q = [acc[rows[:, k]] for k in range(4)]
    low = _fma(q[0], wyk[0], (q[1] * wyk[1]).astype(_F32))
    high = _fma(q[2], wyk[2], (q[3] * wyk[3]).astype(_F32))
    out = np.clip(np.rint(low + high), 0, 255).astype(np.uint8)
    return out if image.ndim == 3 else out[..., 0]
