"""Defaults and choices of the metrics, importable without numpy/OpenCV (the nodes' schemas read them)."""
from __future__ import annotations

FLOW_SIZE = 256                           # long side (px) the frames are resized to for the optical flow
COMPARE_MODES = ("relative", "absolute")  # driver comparisons: change from the first frame, or shapes as they are
