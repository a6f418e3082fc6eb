"""Loading the released appearance files: ``hyportrait/dino.pth`` and ``hyportrait/image_proj.pth``.

Both are plain ``torch.save`` state dicts, read with ``torch.load(weights_only=True)`` on the CPU
(:func:`~..loaders.checkpoint.read_state_dict`). ``dino.pth`` stores float16 values and int64 BatchNorm counters:
the counters are loaded when present and optional otherwise; floating tensors keep the file's dtype unless a
``dtype`` is given. ``image_proj.pth`` has bare ``weight``/``bias`` keys that belong to the inner ``linear``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..loaders.checkpoint import load_file_with_policy, load_with_policy, read_state_dict
from ..loaders.policy import BN_COUNTERS, Conversion, LoadPolicy
from .dino import DinoConfig, DinoV2IdEncoder
from .image_proj import ImageProjector

DINO_FILE = "hyportrait/dino.pth"
IMAGE_PROJ_FILE = "hyportrait/image_proj.pth"


def _bare_linear_keys(sd: dict) -> tuple[dict, int]:
    """``weight``/``bias`` -> ``linear.weight``/``linear.bias`` (files saved from the inner Linear)."""
    table = {"weight": "linear.weight", "bias": "linear.bias"}
    n = sum(k in table for k in sd)
    return {table.get(k, k): v for k, v in sd.items()}, n


DINO_POLICY = LoadPolicy("HunyuanPortrait DINOv2 + IMAdapter (dino.pth)", unwrap=("state_dict",),
                         strip_prefixes=("module.",), optional=(BN_COUNTERS,))
IMAGE_PROJ_POLICY = LoadPolicy("HunyuanPortrait image projector (image_proj.pth)", unwrap=("state_dict",),
                               conversions=(Conversion("bare Linear keys (weight/bias -> linear.*)",
                                                       _bare_linear_keys),))


def load_dino(path: str | Path, dtype: Optional[torch.dtype] = None,
              config: DinoConfig = DinoConfig()) -> DinoV2IdEncoder:
    """The appearance encoder from ``dino.pth`` (eval mode; the file's float16 unless ``dtype`` is given)."""
    return load_file_with_policy(path, lambda: DinoV2IdEncoder(config), DINO_POLICY, dtype=dtype,
                                 what="HunyuanPortrait DINOv2 + IMAdapter")


def load_image_proj(path: str | Path, dtype: Optional[torch.dtype] = None) -> ImageProjector:
    """The token-axis projector from ``image_proj.pth`` (eval mode)."""
    sd = read_state_dict(path)
    tokens_out, tokens_in = _linear_shape(sd)
    model = load_with_policy(lambda: ImageProjector(tokens_in, tokens_out), sd, IMAGE_PROJ_POLICY, str(path),
                             dtype=dtype, what="HunyuanPortrait ImageProjector")
    return model.eval()


def _linear_shape(sd: dict) -> tuple[int, int]:
    weight = sd.get("weight", sd.get("linear.weight"))
    return tuple(weight.shape) if weight is not None and weight.ndim == 2 else (64, 261)


__all__ = ["DINO_FILE", "DINO_POLICY", "IMAGE_PROJ_FILE", "IMAGE_PROJ_POLICY", "load_dino", "load_image_proj"]
