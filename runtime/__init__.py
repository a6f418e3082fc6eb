"""Runtime selection: ComfyUI's when the pack runs inside ComfyUI, plain torch otherwise."""
from __future__ import annotations

import sys

from .base import Interrupted, ModelHandle, Progress, Runtime, parse_dtype
from .standalone import StandaloneRuntime


def inside_comfyui() -> bool:
    return "comfy.model_management" in sys.modules


def get_runtime(node_id=None) -> Runtime:
    """The runtime for the current process: ComfyUI's inside ComfyUI, else a standalone one on the best device."""
    if inside_comfyui():
        from .comfy import ComfyRuntime

        return ComfyRuntime(node_id=node_id)
    return StandaloneRuntime()


__all__ = ["Interrupted", "ModelHandle", "Progress", "Runtime", "StandaloneRuntime", "get_runtime", "inside_comfyui",
           "parse_dtype"]
