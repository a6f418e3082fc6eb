"""Loading HunyuanPortrait's motion files: ``hyportrait/expression.pth``, ``headpose.pth`` and ``motion_proj.pth``.

All three are plain float32 ``torch.save`` state dicts, read with ``torch.load(weights_only=True)`` on the CPU
(:func:`~...loaders.checkpoint.read_state_dict`) and filled into their modules under one :class:`LoadPolicy` each:
a ``state_dict`` wrapper and a ``module.`` (DDP) prefix are removed, known extras of training checkpoints (optimizer /
EMA entries, BatchNorm step counters: these nets use GroupNorm) are dropped with a log line, any missing key is an
error naming the file and the keys. The tensors keep the file's dtype unless ``dtype`` is given (the official script
runs these three nets in float32).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ...loaders.checkpoint import load_file_with_policy
from ...loaders.policy import BN_COUNTERS, EMA_DROP, OPTIMIZER_DROPS, Drop, LoadPolicy
from .expression import ExpressionEncoder, ExpressionEncoderConfig
from .head_pose import HeadPoseConfig, HeadPoseNet
from .refiner import IntensityAwareMotionRefiner, MotionRefinerConfig

EXPRESSION_FILE = "hyportrait/expression.pth"
HEAD_POSE_FILE = "hyportrait/headpose.pth"
MOTION_REFINER_FILE = "hyportrait/motion_proj.pth"

TRAINING_EXTRAS = (*OPTIMIZER_DROPS, EMA_DROP,
                   Drop(r".*" + BN_COUNTERS, "BatchNorm step counters (these nets use GroupNorm)"))


def _policy(name: str) -> LoadPolicy:
    return LoadPolicy(name, unwrap=("state_dict",), strip_prefixes=("module.",), drops=TRAINING_EXTRAS)


EXPRESSION_POLICY = _policy("HunyuanPortrait expression encoder (expression.pth)")
HEAD_POSE_POLICY = _policy("HunyuanPortrait head pose (headpose.pth)")
MOTION_REFINER_POLICY = _policy("HunyuanPortrait motion refiner (motion_proj.pth)")


def load_expression_encoder(path: str | Path, dtype: Optional[torch.dtype] = None,
                            config: ExpressionEncoderConfig = ExpressionEncoderConfig()) -> ExpressionEncoder:
    """The ResNet-50-GN expression encoder from ``expression.pth`` (eval mode)."""
    return load_file_with_policy(path, lambda: ExpressionEncoder(config), EXPRESSION_POLICY, dtype=dtype,
                                 what="HunyuanPortrait HeadExpression (ResNet-50-GN)")


def load_head_pose(path: str | Path, dtype: Optional[torch.dtype] = None,
                   config: HeadPoseConfig = HeadPoseConfig()) -> HeadPoseNet:
    """The ResNet-18-GN head-pose net from ``headpose.pth`` (eval mode)."""
    return load_file_with_policy(path, lambda: HeadPoseNet(config), HEAD_POSE_POLICY, dtype=dtype,
                                 what="HunyuanPortrait HeadPose (ResNet-18-GN)")


def load_motion_refiner(path: str | Path, dtype: Optional[torch.dtype] = None,
                        config: MotionRefinerConfig = MotionRefinerConfig()) -> IntensityAwareMotionRefiner:
    """The intensity-aware motion refiner from ``motion_proj.pth`` (eval mode)."""
    return load_file_with_policy(path, lambda: IntensityAwareMotionRefiner(config), MOTION_REFINER_POLICY,
                                 dtype=dtype, what="HunyuanPortrait IntensityAwareMotionRefiner")


__all__ = ["EXPRESSION_FILE", "EXPRESSION_POLICY", "HEAD_POSE_FILE", "HEAD_POSE_POLICY", "MOTION_REFINER_FILE",
           "MOTION_REFINER_POLICY", "TRAINING_EXTRAS", "load_expression_encoder", "load_head_pose",
           "load_motion_refiner"]
