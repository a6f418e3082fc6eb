"""HunyuanPortrait's pose guider (official ``PoseGuider(320, block_out_channels=(16, 32, 96, 256))``, file
``hyportrait/pose_guider.pth``).

Frame-wise 3x3 convs (frames folded into the batch): ``conv_in`` 3 -> 16, then per channel step a same-width conv and
a stride-2 conv (``blocks.0`` 16->16, ``blocks.1`` 16->32 /2, ``blocks.2`` 32->32, ``blocks.3`` 32->96 /2,
``blocks.4`` 96->96, ``blocks.5`` 96->256 /2), SiLU after each, ``conv_out`` 256 -> 320 (no activation). The map is
added to the UNet's ``conv_in`` output.

The official inference feeds an all-black pose image, so the map is the same for every frame:
:func:`pose_feature_map` computes it once for one frame (numerically identical to running every frame).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..loaders.checkpoint import load_file_with_policy
from ..loaders.policy import EMA_DROP, OPTIMIZER_DROPS, LoadPolicy

POSE_GUIDER_FILE = "hyportrait/pose_guider.pth"
POSE_GUIDER_POLICY = LoadPolicy("HunyuanPortrait pose guider (pose_guider.pth)", unwrap=("state_dict",),
                                strip_prefixes=("module.",), drops=(*OPTIMIZER_DROPS, EMA_DROP))


@dataclass(frozen=True)
class PoseGuiderConfig:
    out_channels: int = 320                               # UNet conv_in width
    in_channels: int = 3
    block_channels: tuple[int, ...] = (16, 32, 96, 256)


class PoseGuider(nn.Module):
    """(B, 3, F, H, W) pose images -> (B, 320, F, H/8, W/8) features (the original's layout)."""

    def __init__(self, config: PoseGuiderConfig = PoseGuiderConfig()):
        super().__init__()
        self.config = config
        ch = config.block_channels
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) -> (N, 320, H/8, W/8)
        x = F.silu(self.conv_in(x.to(self.conv_in.weight.dtype)))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        # pose: (B, 3, F, H, W) -> (B, 320, F, h, w)
        b, _, f = pose.shape[:3]
        out = self.forward_frames(pose.transpose(1, 2).flatten(0, 1))   # (B*F, 320, h, w)
        return out.unflatten(0, (b, f)).transpose(1, 2)


@torch.no_grad()
def pose_feature_map(guider: PoseGuider, height: int, width: int) -> torch.Tensor:
    """The map of the all-black pose image the official inference uses: (320, height/8, width/8), same every frame."""
    w = guider.conv_in.weight
    black = torch.zeros(1, guider.config.in_channels, height, width, device=w.device, dtype=w.dtype)
    return guider.forward_frames(black)[0]


def load_pose_guider(path: str | Path, dtype: Optional[torch.dtype] = None,
                     config: Optional[PoseGuiderConfig] = None) -> PoseGuider:
    """The pose guider from ``pose_guider.pth`` (eval mode; the file's dtype unless ``dtype`` is given)."""
    cfg = config or PoseGuiderConfig()
    return load_file_with_policy(path, lambda: PoseGuider(cfg), POSE_GUIDER_POLICY, dtype=dtype,
                                 what="HunyuanPortrait PoseGuider")


__all__ = ["POSE_GUIDER_FILE", "POSE_GUIDER_POLICY", "PoseGuider", "PoseGuiderConfig", "load_pose_guider",
           "pose_feature_map"]
