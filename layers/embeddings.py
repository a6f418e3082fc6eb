"""Timestep, coefficient and position embeddings.

* :func:`timestep_embedding`: the diffusion timestep encoding (sin/cos halves, optionally cosine first).
* :func:`coefficient_tokens`: one timestep-encoded token per scalar of a coefficient vector (HelloMeme's ARKit
  blendshape and PD-FGC motion-code tokens).
* :class:`TimestepEmbedding`: ``linear_1 -> SiLU -> linear_2`` (diffusers keys).
* Two sinusoidal position encodings that are NOT interchangeable:

  - :class:`SinusoidalTable`: a persistent buffer ``pe`` (1, max_len, dim), sin on even and cos on odd channels.
    It is part of the checkpoints, so the loaded values are used as stored, never recomputed.
  - :func:`sincos_halves` / :class:`SinCosHalves`: computed ``[sin(p * w_i) | cos(p * w_i)]`` halves, not stored.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


def coefficient_tokens(coefficients: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """One sinusoidal token per scalar: (..., N) -> float32 (numel, dim), rows in row-major order (e.g. '(b f n)').

    ``a = coefficient * scale`` in the input dtype (multiplied before flattening), then the timestep encoding of
    ``a``: cosine half first, no frequency shift.
    """
    values = (coefficients * scale).reshape(-1)
    return timestep_embedding(values, dim, flip_sin_to_cos=True, freq_shift=0.0)


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2``: (..., in) -> (..., out)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(t_emb)))


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """``(1, max_len, dim)`` float32: ``sin(p * w_i)`` on even channels, ``cos(p * w_i)`` on odd channels,
    ``w_i = exp(-ln(10000) * 2i / dim)``."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)[:, : dim // 2]
    return pe


def sincos_halves(length: int, dim: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(length, dim) table ``[sin(p * w_i) | cos(p * w_i)]``, ``w_i = 10000^(-i / (dim/2))``, i < dim/2.

    Computed in float32 and cast to ``dtype``.
    """
    pos = torch.arange(length, device=device).float()
    omega = torch.arange(dim // 2, device=device).float()
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    angles = torch.outer(pos, omega)  # (L, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype=dtype)


class SinusoidalTable(nn.Module):
    """Stored interleaved position table (persistent buffer ``pe`` (1, max_len, dim)): ``x + pe[:, :L]``.

    The buffer starts as :func:`sinusoid_table`; loading a checkpoint replaces it with the stored values.
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim), persistent=True)

    def table(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """The first ``length`` rows (length, D) of the stored table, in ``like``'s dtype."""
        if length > self.pe.shape[1]:
            raise ValueError(f"sequence of {length} tokens is longer than the stored position table "
                             f"({self.pe.shape[1]} positions)")
        return self.pe[0, :length].to(like.dtype)

    def forward(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        # x: (N, L, D) -> (N, L, D)
        return _add_table(self, x, length)


class SinCosHalves(nn.Module):
    """Adds the computed ``[sin | cos]`` table: ``x + table(L)`` for tokens ``x`` of shape (N, L, D).

    ``length`` overrides the table length (a table of another length than the token count cannot be added and
    raises; HelloMeme v5's reference block asks for its row length in the column stage).
    """

    def table(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """(length, D) table in ``like``'s dtype and device (D = ``like.shape[-1]``)."""
        return sincos_halves(length, like.shape[-1], dtype=like.dtype, device=like.device)

    def forward(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        # x: (N, L, D) -> (N, L, D)
        return _add_table(self, x, length)


def _add_table(positions, x: torch.Tensor, length: int | None) -> torch.Tensor:
    # x: (N, L, D) tokens; a table of another length than L cannot be added
    length = x.shape[1] if length is None else length
    if length != x.shape[1]:
        raise ValueError(f"positional table of length {length} cannot be added to {x.shape[1]} tokens")
    return x + positions.table(length, x)[None]
