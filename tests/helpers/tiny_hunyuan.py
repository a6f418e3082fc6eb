"""Small stand-ins for HunyuanPortrait's released files, for tests that run without the real weights."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import torch
from torch import Tensor


# ---- YOLOv5-face stand-in -----------------------------------------------------------------------------------------
# A TorchScript module called like the released ``yoloface_v5m.pt``: ``forward(img (1, 3, h1, w1), grids) ->
# (1, A, 16)`` rows cx, cy, w, h, objectness, 5 x (x, y) landmarks, class, in input pixels, with A = 3 anchors x the
# cells of the three stride-8/16/32 grids. Every row is zero except those of :func:`yolo_standin_specs`. It checks
# the grids it is given (3 of them, shapes (1, 1, h1 // s, w1 // s, 2), (x, y) order) and raises otherwise.
YOLO_FACE_BOX = (0.5, 0.42, 0.36, 0.46)
# landmarks as fractions of a face box (from its top-left corner): eyes, nose, mouth corners
YOLO_LANDMARKS = ((0.35, 0.40), (0.65, 0.40), (0.50, 0.58), (0.38, 0.78), (0.62, 0.78))
YOLO_DUPLICATE_SHIFT = 0.02  # the duplicate is the face moved by 2% of its box in x and y


def yolo_standin_specs(box: Sequence[float] = YOLO_FACE_BOX) -> dict[str, tuple[int, list[float]]]:
    """name -> (row index, [cx, cy, w, h as fractions of the input width / height, objectness, class]):

    * ``face``: ``box``, objectness 0.9, class 0.95;
    * ``duplicate``: the face shifted by 2% of its box, objectness 0.8 (NMS suppresses it);
    * ``low``: objectness 0.3, bottom right (dropped by the objectness threshold);
    * ``small``: a second face a quarter of the face's width and height in the top-left corner, objectness 0.7,
      class 0.9 (no overlap with the face).
    The smallest input (32 x 32) has A = 63 rows, so the indices always exist."""
    cx, cy, w, h = (float(v) for v in box)
    d = YOLO_DUPLICATE_SHIFT
    return {"duplicate": (3, [cx + d * w, cy + d * h, w, h, 0.8, 0.95]),
            "face": (10, [cx, cy, w, h, 0.9, 0.95]),
            "low": (20, [0.8, 0.85, 0.1, 0.1, 0.3, 0.99]),
            "small": (30, [0.1, 0.1, w / 4, h / 4, 0.7, 0.9])}


def yolo_row(spec: Sequence[float], h1: int, w1: int) -> list[float]:
    """One 16-value row (input pixels) of a spec, in Python floats (the expected values of a test)."""
    cx, cy, w, h = spec[0] * w1, spec[1] * h1, spec[2] * w1, spec[3] * h1
    points = [v for fx, fy in YOLO_LANDMARKS for v in (cx - w / 2 + fx * w, cy - h / 2 + fy * h)]
    return [cx, cy, w, h, spec[4], *points, spec[5]]


class _YoloFaceStandin(torch.nn.Module):
    def __init__(self, box: Sequence[float]):
        super().__init__()
        specs = yolo_standin_specs(box)
        self.rows = [index for index, _ in specs.values()]
        self.specs = [[float(v) for v in spec] for _, spec in specs.values()]
        self.lmk = [float(v) for p in YOLO_LANDMARKS for v in p]

    def forward(self, img: Tensor, grids: List[Tensor]) -> Tensor:
        h1, w1 = img.shape[2], img.shape[3]
        if len(grids) != 3:
            raise RuntimeError("expected 3 grids (strides 8, 16, 32), got " + str(len(grids)))
        strides = [8, 16, 32]
        total = 0
        for i in range(3):
            s = strides[i]
            g = grids[i]
            want = [1, 1, h1 // s, w1 // s, 2]
            if list(g.shape) != want:
                raise RuntimeError("grid " + str(i) + " has shape " + str(list(g.shape)) + ", expected " + str(want))
            ny, nx = g.shape[2], g.shape[3]
            if ny > 1 and nx > 1:  # last axis (x, y): x counts along the nx axis, y along the ny axis
                if bool(g[0, 0, 0, 1, 0] != 1.0) or bool(g[0, 0, 1, 0, 1] != 1.0) or bool(g[0, 0, 1, 0, 0] != 0.0):
                    raise RuntimeError("grid " + str(i) + " is not the (x, y) meshgrid of arange(ny), arange(nx)")
            total += 3 * ny * nx
        out = torch.zeros(1, total, 16)
        for r in range(len(self.rows)):
            spec = self.specs[r]
            cx, cy, w, h = spec[0] * w1, spec[1] * h1, spec[2] * w1, spec[3] * h1
            values = [cx, cy, w, h, spec[4]]
            for k in range(5):
                values.append(cx - w / 2 + self.lmk[2 * k] * w)
                values.append(cy - h / 2 + self.lmk[2 * k + 1] * h)
            values.append(spec[5])
            out[0, self.rows[r]] = torch.tensor(values)
        return out.to(img.device, img.dtype)


def write_yolo_standin(path: str | Path, box: Sequence[float] = YOLO_FACE_BOX) -> Path:
    """Save the scripted stand-in at ``path`` with ``torch.jit.save``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(_YoloFaceStandin(box)), str(path))
    return path
