"""Quality metrics of animated portraits, in plain numpy/torch/OpenCV (no ComfyUI).

Each metric returns a :class:`~.series.MetricSeries`: one value per frame (or per frame transition, or per window
boundary), ``None`` where it could not be measured (no face), the mean, and a JSON-friendly summary;
:func:`~.plot.plot_series` draws it as an image (numpy + cv2).

* :mod:`.identity`: ArcFace cosine similarity of every frame's face to the reference (HunyuanPortrait's
  ``arcface.onnx`` on faces aligned from MediaPipe landmarks);
* :mod:`.face_motion`: head pose distance (MediaPipe landmarks + solvePnP, HelloMeme's approximate head pose),
  expression distance (landmark ratios: mouth, eyes, brows) and mouth landmark distance (LMD) to a driving video;
* :mod:`.temporal`: flicker (warp error after Farneback optical flow between consecutive frames) and the seam score
  at window/clip boundaries (the jump at a boundary relative to the frame-to-frame change inside the segments).
"""
from __future__ import annotations

from .series import MetricSeries

__all__ = ["MetricSeries"]
