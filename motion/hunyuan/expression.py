"""HunyuanPortrait's coarse expression encoder (the official ``HeadExpression``, file ``hyportrait/expression.pth``).

A torchvision-shaped ResNet-50 (bottleneck blocks 3-4-6-3, expansion 4) in which every normalisation is
``GroupNorm(1, C)``: statistics over (C, H, W) of each sample, so the result does not depend on the batch. The
released keys sit under ``resnet50.`` with ``gn*`` norms and ``downsample.{0,1}`` shortcuts; ``fc`` maps 2048 -> 512.

Input: the eyebrow-to-mouth crop, RGB in [0, 1] without mean/std (official size 256 x 256; the pooling makes the net
size-agnostic). Output: one 512-d feature per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ExpressionEncoderConfig:
    out_dim: int = 512
    blocks: tuple[int, ...] = (3, 4, 6, 3)   # bottlenecks per stage
    stem_width: int = 64
    expansion: int = 4
    norm_groups: int = 1


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convs, each followed by GroupNorm, with a projected shortcut when the shape changes."""

    def __init__(self, in_ch: int, planes: int, stride: int, groups: int, expansion: int):
        super().__init__()
        out_ch = planes * expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.gn1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.gn3 = nn.GroupNorm(groups, out_ch)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.GroupNorm(groups, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(self.conv1(x)))
        out = F.relu(self.gn2(self.conv2(out)))
        out = self.gn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class GroupNormResNet50(nn.Module):
    """Stem (7x7/2 conv, GroupNorm, ReLU, 3x3/2 max-pool), four bottleneck stages, global average pool, ``fc``."""

    def __init__(self, config: ExpressionEncoderConfig = ExpressionEncoderConfig()):
        super().__init__()
        c, g = config, config.norm_groups
        self.conv1 = nn.Conv2d(3, c.stem_width, 7, stride=2, padding=3, bias=False)
        self.gn1 = nn.GroupNorm(g, c.stem_width)
        in_ch = c.stem_width
        for i, n in enumerate(c.blocks):
            planes = c.stem_width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(Bottleneck(in_ch, planes, 2 if (i > 0 and j == 0) else 1, g, c.expansion))
                in_ch = planes * c.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(c.blocks)
        self.fc = nn.Linear(in_ch, c.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, out_dim)
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class ExpressionEncoder(nn.Module):
    """``HeadExpression``: the ResNet-50-GN under the released prefix ``resnet50``."""

    def __init__(self, config: ExpressionEncoderConfig = ExpressionEncoderConfig()):
        super().__init__()
        self.config = config
        self.resnet50 = GroupNormResNet50(config)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        # face: (B, 3, H, W) RGB in [0, 1] -> (B, 512)
        return self.resnet50(face.to(self.resnet50.fc.weight.dtype))


__all__ = ["Bottleneck", "ExpressionEncoder", "ExpressionEncoderConfig", "GroupNormResNet50"]
