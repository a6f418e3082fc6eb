"""HunyuanPortrait's head-pose net (the official ``HeadPose``, file ``hyportrait/headpose.pth``).

A ResNet-18 (basic blocks 2-2-2-2) with ``GroupNorm(32, C)`` in place of every BatchNorm; the released keys keep the
BatchNorm-style names (``bn1``/``bn2``, shortcut ``shortcut.{0,1}``) under ``head_pose_net.``; ``fc`` 512 -> 6.
Outputs: rotation = sigmoid(x[:3]) * 360 - 180 (degrees), translation = sigmoid(x[3:]) * 4 - 2.

Official quirks reproduced by :meth:`HeadPoseNet.pose_embedding`: the head crop in [0, 1] is fed as ``crop * 2 + 1``
(range [1, 3]), and the translation is multiplied by 0 before it enters the motion tokens (the rotation stays in
degrees).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from .resnet import BasicBlock, GroupNormResNet


@dataclass(frozen=True)
class HeadPoseConfig:
    blocks: tuple[int, ...] = (2, 2, 2, 2)   # basic blocks per stage
    stem_width: int = 64
    norm_groups: int = 32
    outputs: int = 6                          # 3 rotations + 3 translations
    rotation_range: float = 360.0             # sigmoid * range - range / 2 (degrees)
    translation_range: float = 4.0


class HeadPose(NamedTuple):
    rotation: torch.Tensor       # (B, 3) degrees
    translation: torch.Tensor    # (B, 3)


def head_pose_input(crop: torch.Tensor) -> torch.Tensor:
    """The official network input: the [0, 1] head crop mapped to ``crop * 2 + 1`` (range [1, 3])."""
    return crop * 2 + 1


class HeadPoseNet(nn.Module):
    """``HeadPose``: the ResNet-18-GN under the released prefix ``head_pose_net``."""

    def __init__(self, config: HeadPoseConfig = HeadPoseConfig()):
        super().__init__()
        self.config = config
        g = config.norm_groups
        self.head_pose_net = GroupNormResNet(partial(BasicBlock, groups=g), config.blocks, config.outputs, g,
                                             stem_width=config.stem_width, stem_norm="bn1")

    def forward(self, x: torch.Tensor) -> HeadPose:
        # x: (B, 3, H, W) network input (see head_pose_input) -> rotation (B, 3) degrees, translation (B, 3)
        raw = self.head_pose_net(x.to(self.head_pose_net.fc.weight.dtype))
        rot_range, tr_range = self.config.rotation_range, self.config.translation_range
        rotation = torch.sigmoid(raw[:, :3]) * rot_range - rot_range / 2
        translation = torch.sigmoid(raw[:, 3:]) * tr_range - tr_range / 2
        return HeadPose(rotation, translation)

    def pose_embedding(self, crop: torch.Tensor) -> torch.Tensor:
        """The 6 values appended to every motion token: [rotation (deg), translation * 0]. crop: (B, 3, H, W) in
        [0, 1] -> (B, 6)."""
        pose = self(head_pose_input(crop))
        return pose_embedding(pose)


def pose_embedding(pose: HeadPose) -> torch.Tensor:
    """(B, 6) = [rotation, translation * 0] (the official script zeroes the translation)."""
    return torch.cat([pose.rotation, pose.translation * 0], dim=-1)


__all__ = ["HeadPose", "HeadPoseConfig", "HeadPoseNet", "head_pose_input", "pose_embedding"]
