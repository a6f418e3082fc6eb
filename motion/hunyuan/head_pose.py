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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


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


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm; a 1x1 projected shortcut (``shortcut.{0,1}``) when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(groups, out_ch)
        self.shortcut = nn.Sequential()      # identity (no keys) unless projected
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.GroupNorm(groups, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class GroupNormResNet18(nn.Module):
    """Stem (7x7/2 conv, GroupNorm, ReLU, 3x3/2 max-pool), four basic-block stages, global average pool, ``fc``."""

    def __init__(self, config: HeadPoseConfig = HeadPoseConfig()):
        super().__init__()
        c, g = config, config.norm_groups
        self.conv1 = nn.Conv2d(3, c.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.GroupNorm(g, c.stem_width)
        in_ch = c.stem_width
        for i, n in enumerate(c.blocks):
            out_ch = c.stem_width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_ch, out_ch, 2 if (i > 0 and j == 0) else 1, g))
                in_ch = out_ch
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(c.blocks)
        self.fc = nn.Linear(in_ch, c.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, 6) raw logits
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def head_pose_input(crop: torch.Tensor) -> torch.Tensor:
    """The official network input: the [0, 1] head crop mapped to ``crop * 2 + 1`` (range [1, 3])."""
    return crop * 2 + 1


class HeadPoseNet(nn.Module):
    """``HeadPose``: the ResNet-18-GN under the released prefix ``head_pose_net``."""

    def __init__(self, config: HeadPoseConfig = HeadPoseConfig()):
        super().__init__()
        self.config = config
        self.head_pose_net = GroupNormResNet18(config)

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


__all__ = ["BasicBlock", "GroupNormResNet18", "HeadPose", "HeadPoseConfig", "HeadPoseNet", "head_pose_input",
           "pose_embedding"]
