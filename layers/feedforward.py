"""GEGLU feed-forward with diffusers key names (``net.0.proj``, ``net.2``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GEGLU(nn.Module):
    """``proj`` (dim_in -> 2 * dim_out), split into value and gate, ``value * gelu(gate)`` (exact erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(value)  # the product into gelu's fresh output


class FeedForward(nn.Module):
    """``net.0`` GEGLU (dim -> inner, gated), ``net.1`` no-op dropout, ``net.2`` Linear (inner -> dim).

    ``inner_dim`` defaults to ``dim * mult``.
    """

    def __init__(self, dim: int, mult: int = 4, inner_dim: int | None = None):
        super().__init__()
        inner = inner_dim or dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim) -> (..., dim)
        for layer in self.net:
            x = layer(x)
        return x
