"""The GroupNorm ResNets behind HunyuanPortrait's expression encoder and head-pose net.

One backbone, two block types: a stem (7x7/2 conv, GroupNorm, ReLU, 3x3/2 max-pool), stages of blocks (the first
block of every stage after the first strides by 2), a global average pool and ``fc``. The released files name the
stem norm differently (``gn1`` in ``expression.pth``, ``bn1`` in ``headpose.pth``), and so do the blocks: the
bottleneck's norms are ``gn1..3`` with a ``downsample.{0,1}`` shortcut, the basic block's ``bn1/bn2`` with
``shortcut.{0,1}``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convs, each followed by GroupNorm, with a projected shortcut when the shape changes.
    Output channels: ``planes * expansion``."""

    def __init__(self, in_ch: int, planes: int, stride: int, groups: int, expansion: int = 4):
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


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm; a 1x1 projected shortcut (``shortcut.{0,1}``) when the shape changes.
    Output channels: ``planes``."""

    def __init__(self, in_ch: int, planes: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.GroupNorm(groups, planes)
        self.shortcut = nn.Sequential()      # identity (no keys) unless projected
        if stride != 1 or in_ch != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, planes, 1, stride=stride, bias=False),
                                          nn.GroupNorm(groups, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class GroupNormResNet(nn.Module):
    """Stem, ``stages`` blocks per stage (``block(in_ch, planes, stride)``, ``planes = stem_width * 2**i``, output
    ``planes * expansion``), global average pool, ``fc``. ``stem_norm`` is the released name of the stem's norm."""

    def __init__(self, block: Callable[[int, int, int], nn.Module], stages: tuple[int, ...], out_dim: int,
                 groups: int, stem_width: int = 64, expansion: int = 1, stem_norm: str = "gn1"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        self.stem_norm = stem_norm
        self.add_module(stem_norm, nn.GroupNorm(groups, stem_width))
        in_ch = stem_width
        for i, n in enumerate(stages):
            planes = stem_width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, planes, 2 if (i > 0 and j == 0) else 1))
                in_ch = planes * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(stages)
        self.fc = nn.Linear(in_ch, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, out_dim)
        x = F.relu(getattr(self, self.stem_norm)(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


__all__ = ["BasicBlock", "Bottleneck", "GroupNormResNet"]
