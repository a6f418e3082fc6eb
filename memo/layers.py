"""Building blocks of the two MEMO UNets (Reference Net, Diffusion Net): the SD resnet block with frame-pooled
GroupNorm, down/up-samplers and small config helpers. Module and parameter names follow diffusers, so the released
checkpoints load strictly into the modules built from them. Attention, feed-forward and timestep embeddings are the
pack's shared :mod:`...layers`.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def clip_group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: int | None) -> torch.Tensor:
    """GroupNorm of per-frame rows ``(B*F, C, H, W)``: per frame if ``frames`` is None, else statistics pooled over the
    F frames of each batch element (a plain GroupNorm on the 5-D ``(B, C, F, H, W)`` tensor)."""
    if frames is None or frames == 1:
        return norm(x)
    bf, c = x.shape[:2]
    y = x.view(bf // frames, frames, c, *x.shape[2:]).transpose(1, 2)  # (B, C, F, H, W)
    y = norm(y)
    return y.transpose(1, 2).reshape(x.shape)


class ResnetBlock(nn.Module):
    """SD resnet: ``norm1 -> SiLU -> conv1 (+ time_emb_proj(SiLU(temb))) -> norm2 -> SiLU -> conv2`` + shortcut.

    Works on per-frame rows ``(N, C, H, W)``; ``temb`` is ``(B, temb_channels)`` with ``N`` a multiple of ``B`` (rows
    of a batch element are consecutive). ``pooled_frames`` makes the GroupNorms pool statistics over that many frames.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int = 32, eps: float = 1e-5,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor, pooled_frames: int | None = None) -> torch.Tensor:
        h = F.silu(clip_group_norm(self.norm1, x, pooled_frames))
        h = self.conv1(h)
        t = self.time_emb_proj(F.silu(temb))
        if t.shape[0] != h.shape[0]:
            t = t.repeat_interleave(h.shape[0] // t.shape[0], dim=0)
        h = h + t[:, :, None, None]
        h = F.silu(clip_group_norm(self.norm2, h, pooled_frames))
        h = self.conv2(self.dropout(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 (or to ``size``) then a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x)


def heads_per_block(value, count: int) -> list[int]:
    """A config's per-block head count (int or list) as a list of ``count`` ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"expected {count} per-block values, got {list(value)}")
        return [int(v) for v in value]
    return [int(value)] * count


def check_block_types(config, down: tuple[str, ...], up: tuple[str, ...], what: str) -> None:
    """Raise a clear error when the config names a down/up block type this implementation does not build."""
    for kind, names, allowed in (("down", config.down_block_types, down), ("up", config.up_block_types, up)):
        for name in names:
            if name not in allowed:
                raise ValueError(f"{what} config: unsupported {kind} block {name!r}")


def check_config_values(config: dict, required: dict, what: str) -> None:
    """Raise a clear error when ``config`` sets a key to a value this implementation does not support."""
    bad = []
    for key, allowed in required.items():
        if key not in config:
            continue
        value = config[key]
        ok = value in allowed if isinstance(allowed, tuple) else value == allowed
        if not ok:
            bad.append(f"{key}={value!r} (supported: {allowed!r})")
    if bad:
        raise ValueError(f"{what} config has unsupported values: " + "; ".join(bad))


def dataclass_from_config(cls, config: dict):
    """Build a config dataclass from a (diffusers) config dict, ignoring bookkeeping and unknown keys."""
    names = {f.name for f in fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in names}
    return cls(**kwargs)
