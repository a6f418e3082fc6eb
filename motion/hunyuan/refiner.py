"""HunyuanPortrait's intensity-aware motion refiner (the official ``IntensityAwareMotionRefiner``, file
``hyportrait/motion_proj.pth``).

Per driving frame, one 512-d expression feature becomes 64 motion tokens of 1018 values:

* intensity = ``position_head[head_id] + position_exp[exp_id]`` (two 128-row tables of 768-d vectors; one id pair per
  chunk of driving frames, broadcast to its frames);
* memory bank: ``connector.latents`` (64, 768) + ``intensity_aware_linear(SiLU(intensity))``;
* 6 Perceiver blocks (``connector.perceiver_blocks.i``): latents += MHA(q = AdaLN_1(latents),
  kv = [AdaLN_1(latents), AdaLN_2(proj_in(feature))]) (65 key/value tokens, packed ``in_proj`` of
  ``nn.MultiheadAttention``), then latents += MLP(AdaLN_ff(latents)) with a squared-ReLU (``c_fc``, ``c_proj``);
* AdaLN: LayerNorm(no affine, eps 1e-6)(x) * (1 + scale) + shift, (shift, scale) = halves of Linear(SiLU(intensity));
* ``proj_out``: Linear(768 -> 1018) + LayerNorm(1018).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MotionRefinerConfig:
    input_dim: int = 512          # expression feature
    output_dim: int = 1018        # + 6 pose values = 1024 motion channels
    num_queries: int = 64         # memory-bank latents = motion tokens per frame
    intensity_dim: int = 768
    intensity_levels: int = 128   # rows of each intensity table (ids 0..127)
    width: int = 768
    layers: int = 6
    heads: int = 8
    mlp_ratio: int = 4


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, modulated by the intensity: ``norm(x) * (1 + scale) + shift``."""

    def __init__(self, dim: int, intensity_dim: int):
        super().__init__()
        self.linear = nn.Linear(intensity_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        # x: (N, L, dim); intensity: (N, 1, intensity_dim) -> (N, L, dim)
        shift, scale = self.linear(F.silu(intensity)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class PerceiverBlock(nn.Module):
    """Latents attend to [themselves, the frame's feature token]; then a squared-ReLU MLP. Both residual."""

    def __init__(self, width: int, heads: int, intensity_dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * mlp_ratio))
        self.mlp.add_module("sq_relu", SquaredReLU())
        self.mlp.add_module("c_proj", nn.Linear(width * mlp_ratio, width))
        self.ln_1 = AdaLayerNorm(width, intensity_dim)
        self.ln_2 = AdaLayerNorm(width, intensity_dim)
        self.ln_ff = AdaLayerNorm(width, intensity_dim)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        # x: (N, L, width) feature tokens; latents: (N, Q, width); intensity: (N, 1, D) -> (N, Q, width)
        q = self.ln_1(latents, intensity)
        kv = torch.cat([q, self.ln_2(x, intensity)], dim=1)            # (N, Q + L, width)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.mlp(self.ln_ff(latents, intensity))


class PerceiverResampler(nn.Module):
    """``connector``: learned latents + intensity offset, ``proj_in``, the blocks, ``proj_out`` (Linear + LayerNorm)."""

    def __init__(self, c: MotionRefinerConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(c.num_queries, c.width) * c.width ** -0.5)
        self.intensity_aware_linear = nn.Linear(c.intensity_dim, c.width)
        self.proj_in = nn.Linear(c.input_dim, c.width)
        self.perceiver_blocks = nn.ModuleList(
            PerceiverBlock(c.width, c.heads, c.intensity_dim, c.mlp_ratio) for _ in range(c.layers))
        self.proj_out = nn.Sequential(nn.Linear(c.width, c.output_dim), nn.LayerNorm(c.output_dim))

    def forward(self, x: torch.Tensor, intensity: torch.Tensor, return_block0: bool = False):
        # x: (N, L, input_dim); intensity: (N, 1, D) -> (N, Q, output_dim)
        latents = self.latents.unsqueeze(0) + self.intensity_aware_linear(F.silu(intensity))   # (N, Q, width)
        x = self.proj_in(x)
        after_block0 = None
        for i, block in enumerate(self.perceiver_blocks):
            latents = block(x, latents, intensity)
            if i == 0:
                after_block0 = latents
        out = self.proj_out(latents)
        return (out, after_block0) if return_block0 else out


class IntensityAwareMotionRefiner(nn.Module):
    """Expression features + intensity ids -> motion tokens (the released module layout of ``motion_proj.pth``)."""

    def __init__(self, config: MotionRefinerConfig = MotionRefinerConfig()):
        super().__init__()
        self.config = config
        self.position_head = nn.Embedding(config.intensity_levels, config.intensity_dim)
        self.position_exp = nn.Embedding(config.intensity_levels, config.intensity_dim)
        self.connector = PerceiverResampler(config)

    def intensity(self, head_id: torch.Tensor, exp_id: torch.Tensor) -> torch.Tensor:
        """(K,) ids -> (K, intensity_dim) = position_head[head_id] + position_exp[exp_id]."""
        head_id, exp_id = torch.as_tensor(head_id).reshape(-1), torch.as_tensor(exp_id).reshape(-1)
        dev = self.position_head.weight.device
        return self.position_head(head_id.long().to(dev)) + self.position_exp(exp_id.long().to(dev))

    def forward(self, features: torch.Tensor, head_id, exp_id, return_block0: bool = False):
        """features: (T, C) (one chunk of frames) -> (T, Q, out), or (B, T, L, C) -> (B, T, Q, out).

        ``head_id``/``exp_id``: one id each (broadcast to every frame, as the official call) or one per frame.
        ``return_block0`` also returns the latents after the first block (debug aid, (frames, Q, width)).
        """
        squeeze = features.ndim == 2
        if squeeze:
            features = features[None, :, None]                          # (1, T, 1, C)
        b, t = features.shape[:2]
        x = features.flatten(0, 1).to(self.position_head.weight.dtype)  # (B*T, L, C)
        intensity = self.intensity(head_id, exp_id).to(x.dtype)[:, None]   # (K, 1, D)
        if intensity.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{intensity.shape[0]} intensity ids for {x.shape[0]} frames (give one or one per frame)")
        intensity = intensity.expand(x.shape[0], -1, -1)
        out, block0 = self.connector(x, intensity, return_block0=True)
        out = out.unflatten(0, (b, t))
        if squeeze:
            out = out[0]
        return (out, block0) if return_block0 else out


__all__ = ["AdaLayerNorm", "IntensityAwareMotionRefiner", "MotionRefinerConfig", "PerceiverBlock",
           "PerceiverResampler", "SquaredReLU"]
