"""Positional tables and coefficient tokens used by the HelloMeme spatial-knitting modules.

Two different sinusoidal position encodings appear in the released models; they are not interchangeable:

* :class:`SinusoidalTable` ("PE-A", v1-v4): a persistent buffer ``pe`` of shape (1, max_len, dim) with sin on even
  and cos on odd channels. It is part of the checkpoint and the released files hold whatever values they hold, so
  the stored table is used as loaded, never recomputed: ``x + pe[:, :L]``.
* :func:`sincos_halves` ("PE-B", v5): computed on the fly, ``[sin(pos * w_i) | cos(pos * w_i)]`` (halves, not
  interleaved) with ``w_i = 1 / 10000^(i / (dim/2))``. Not in any checkpoint. :class:`SinCosHalves` wraps it with
  the same call signature as the table.

:func:`coefficient_tokens` turns every scalar of a coefficient vector (ARKit blendshapes, PD-FGC motion codes) into
one token with the diffusion-timestep encoding (cos half first, no frequency shift).

:class:`MLPEmbedding` is the two-layer ``linear_1 -> SiLU -> linear_2`` projection (diffusers ``TimestepEmbedding``
keys) used on those tokens.
"""
from __future__ import annotations

import math

import torch
from torch import nn

ARKIT_SCALE = 500.0  # ARKit blendshape coefficients (in [0, 1]) are multiplied by this before encoding
PDFGC_SCALE = 20.0  # PD-FGC motion codes are multiplied by this before encoding


def sincos_halves(length: int, dim: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(length, dim) table ``[sin(p * w_i) | cos(p * w_i)]``, ``w_i = 10000^(-i / (dim/2))``, i < dim/2.

    Computed in float32 (same operation order as the released code) and cast to ``dtype``.
    """
    pos = torch.arange(length, device=device).float()
    omega = torch.arange(dim // 2, device=device).float()
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    angles = torch.outer(pos, omega)  # (L, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype=dtype)


class SinCosHalves(nn.Module):
    """Adds the computed ``[sin | cos]`` table: ``x + table(L)`` for tokens ``x`` of shape (N, L, D).

    ``length`` overrides the table length (the released v5 reference block builds its column table with the row
    length; a table of another length than the token count cannot be added and raises).
    """

    def table(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """(length, D) table in ``like``'s dtype and device (D = ``like.shape[-1]``)."""
        return sincos_halves(length, like.shape[-1], dtype=like.dtype, device=like.device)

    def forward(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        return _add_table(self, x, length)


class SinusoidalTable(nn.Module):
    """Stored interleaved sin/cos position table (buffer ``pe`` (1, max_len, dim), persistent): ``x + pe[:, :L]``.

    The buffer is initialised with the standard formula, but loading a checkpoint replaces it with the stored values.
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe, persistent=True)

    def table(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """The first ``length`` rows (length, D) of the stored table, in ``like``'s dtype."""
        if length > self.pe.shape[1]:
            raise ValueError(f"sequence of {length} tokens is longer than the stored position table "
                             f"({self.pe.shape[1]} positions)")
        return self.pe[0, :length].to(like.dtype)

    def forward(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        return _add_table(self, x, length)


def _add_table(positions, x: torch.Tensor, length: int | None) -> torch.Tensor:
    # x: (N, L, D) tokens; a table of another length than L cannot be added
    length = x.shape[1] if length is None else length
    if length != x.shape[1]:
        raise ValueError(f"positional table of length {length} cannot be added to {x.shape[1]} tokens")
    return x + positions.table(length, x)[None]


def coefficient_tokens(coefficients: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """One sinusoidal token per scalar: (..., N) -> (numel, dim), rows in row-major order (e.g. '(b f n)').

    ``a = coefficient * scale`` (in the input dtype, as the original multiplies before flattening), then in float32
    ``[cos(a * f_k) | sin(a * f_k)]`` with ``f_k = exp(-ln(10000) * k / (dim/2))``, k < dim/2 (the diffusion
    timestep encoding with ``flip_sin_to_cos=True`` and no frequency shift). Returns float32.
    """
    values = (coefficients * scale).reshape(-1)
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(exponent / half)
    angles = values[:, None].float() * freqs[None, :]  # (numel, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class MLPEmbedding(nn.Module):
    """``linear_1 (in -> out) -> SiLU -> linear_2 (out -> out)`` (diffusers ``TimestepEmbedding`` keys)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
