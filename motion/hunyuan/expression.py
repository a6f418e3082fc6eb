"""HunyuanPortrait's coarse expression encoder (the official ``HeadExpression``, file ``hyportrait/expression.pth``).

A torchvision-shaped ResNet-50 (bottleneck blocks 3-4-6-3, expansion 4) in which every normalisation is
``GroupNorm(1, C)``: statistics over (C, H, W) of each sample, so the result does not depend on the batch. The
released keys sit under ``resnet50.`` with ``gn*`` norms and ``downsample.{0,1}`` shortcuts; ``fc`` maps 2048 -> 512.

Input: the eyebrow-to-mouth crop, RGB in [0, 1] without mean/std (official size 256 x 256; the pooling makes the net
size-agnostic). Output: one 512-d feature per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .resnet import Bottleneck, GroupNormResNet


@dataclass(frozen=True)
class ExpressionEncoderConfig:
    out_dim: int = 512
    blocks: tuple[int, ...] = (3, 4, 6, 3)   # bottlenecks per stage
    stem_width: int = 64
    expansion: int = 4
    norm_groups: int = 1


class ExpressionEncoder(nn.Module):
    """``HeadExpression``: the ResNet-50-GN under the released prefix ``resnet50``."""

    def __init__(self, config: ExpressionEncoderConfig = ExpressionEncoderConfig()):
        super().__init__()
        self.config = config
        g, e = config.norm_groups, config.expansion
        self.resnet50 = GroupNormResNet(partial(Bottleneck, groups=g, expansion=e), config.blocks, config.out_dim, g,
                                        stem_width=config.stem_width, expansion=e, stem_norm="gn1")

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        # face: (B, 3, H, W) RGB in [0, 1] -> (B, 512)
        return self.resnet50(face.to(self.resnet50.fc.weight.dtype))


__all__ = ["ExpressionEncoder", "ExpressionEncoderConfig"]
