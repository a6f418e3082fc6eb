"""Building blocks shared by the MEMO networks (Reference Net, Diffusion Net, audio and motion modules).

Multi-head attention, the GEGLU feed-forward, the SD resnet block with frame-pooled GroupNorm, timestep embeddings,
down/up-samplers and small config helpers. Module and parameter names follow diffusers (``to_q``/``to_k``/``to_v``/
``to_out.0``, ``ff.net.0.proj``/``ff.net.2``, ``linear_1``/``linear_2``, ...), so the released checkpoints load
strictly into the modules built from them.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------------------------------
# Shared building blocks (key names as in diffusers: to_q/to_k/to_v/to_out.0, ff.net.0.proj/ff.net.2, linear_1/2, ...)
# ------------------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps ``(B,)`` -> ``(B, dim)`` in float32 (cosine half first if flipped)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def timesteps_for_batch(timestep, batch: int, device: torch.device) -> torch.Tensor:
    """A python number or a 0-d/1-d tensor -> float tensor ``(batch,)`` on ``device``."""
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        t = t[None]
    return t.to(device).expand(batch)


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2``: (B, in) -> (B, out)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(t_emb)))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention (scale 1/sqrt(head_dim)) on projected tokens (B, L, heads*d) -> (B, Lq, heads*d)."""
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
    return merge_heads(out)


class Attention(nn.Module):
    """Multi-head attention with diffusers key names: ``to_q``, ``to_k``, ``to_v`` (no bias), ``to_out.0`` (bias).

    ``query_dim`` -> inner width ``heads * dim_head`` -> ``out_dim`` (default ``query_dim``); keys/values come from
    ``context`` (width ``context_dim``, default ``query_dim``) or, without context, from the queries' tokens.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 out_dim: int | None = None, bias: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, out_dim or query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, Lq, query_dim), context: (B, Lk, context_dim) -> (B, Lq, out_dim)
        context = x if context is None else context
        out = multihead_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """``proj`` to 2 x inner, ``a * gelu(g)`` with the exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward ``net.0`` (dim -> 4 dim, gated), ``net.1`` dropout, ``net.2`` (4 dim -> dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


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
