"""HunyuanPortrait image projector: a Linear over the token axis, 261 DINO tokens -> 64 appearance tokens.

The released ``image_proj.pth`` holds the bare ``weight`` (64, 261) / ``bias`` (64) of the inner Linear; the loading
policy in :mod:`.appearance_loading` maps them onto ``linear.*``.
"""
from __future__ import annotations

import torch
from torch import nn


class ImageProjector(nn.Module):
    """(B, 261, C) -> (B, 64, C): ``linear`` applied to every channel's token vector."""

    def __init__(self, in_tokens: int = 261, out_tokens: int = 64):
        super().__init__()
        self.linear = nn.Linear(in_tokens, out_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.linear.weight.dtype)
        return self.linear(tokens.transpose(1, 2)).transpose(1, 2)


__all__ = ["ImageProjector"]
