"""Decoupled cross-attention of the HunyuanPortrait UNet: appearance tokens and motion tokens, two softmaxes, summed.

Every ``attn2`` of the UNet (spatial and temporal) carries a :class:`DecoupledCrossAttnProcessor` registered as its
``processor`` sub-module, so its weights load as ``...attn2.processor.to_k_ip.0.weight`` / ``to_v_ip.0.weight``
(bias-free ``Linear(cross_attention_dim -> C)``, one pair per motion branch; the release has one).

Per ``attn2``::

    q = to_q(h)
    out = SDPA(q, to_k(app), to_v(app)) + sum_i scale_i * SDPA(q, to_k_ip.i(mot_i), to_v_ip.i(mot_i))
    out = to_out(out)

Context batches: a context may hold one entry per group of consecutive query rows (query batch ``r * B``, context
batch ``B``; query row ``j`` uses context ``j // r``). The query rows of a group are then attended together as one
longer sequence, which is the same arithmetic as repeating the context ``r`` times without materialising the copies
(the temporal blocks' window-mean context, or one appearance entry per video).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..layers.attention import attention


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention where ``key``/``value`` may have a batch that divides the query's.

    query (Bq, Lq, C), key/value (Bk, Lk, C) with Bq = r * Bk -> (Bq, Lq, C).
    """
    bq, lq, c = query.shape
    bk = key.shape[0]
    if bq % bk:
        raise ValueError(f"query batch {bq} is not a multiple of the context batch {bk}")
    head_dim = c // heads
    q = query.reshape(bk, (bq // bk) * lq, heads, head_dim).transpose(1, 2)
    k = key.reshape(bk, -1, heads, head_dim).transpose(1, 2)
    v = value.reshape(bk, -1, heads, head_dim).transpose(1, 2)
    out = attention(q, k, v)  # (Bk, heads, r*Lq, d)
    return out.transpose(1, 2).reshape(bq, lq, c).to(query.dtype)


def split_context(encoder_hidden_states) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(appearance, [motion, ...])`` from a tuple ``(appearance, motion or [motion, ...])`` or a lone tensor."""
    if isinstance(encoder_hidden_states, (tuple, list)):
        main, extra = encoder_hidden_states
        if extra is None:
            extra = []
        elif isinstance(extra, torch.Tensor):
            extra = [extra]
        return main, list(extra)
    return encoder_hidden_states, []


class DecoupledCrossAttnProcessor(nn.Module):
    """Processor of one ``attn2``: main context through ``to_k``/``to_v``, motion contexts through ``to_k_ip.i`` /
    ``to_v_ip.i``, separate softmaxes summed with ``scale[i]`` before ``to_out``. No masking."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, branches: int = 1,
                 scale: float | Sequence[float] = 1.0):
        super().__init__()
        self.hidden_size, self.cross_attention_dim = hidden_size, cross_attention_dim
        self.scale = list(scale) if isinstance(scale, (list, tuple)) else [float(scale)] * branches
        if len(self.scale) != branches:
            raise ValueError(f"{branches} motion branches but {len(self.scale)} scales")
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False) for _ in range(branches)])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False) for _ in range(branches)])

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("DecoupledCrossAttnProcessor does not take an attention mask")
        # hidden_states (B, L, C); contexts (B or B/r, N, cross_attention_dim)
        main, motions = split_context(encoder_hidden_states)
        if main is None:
            main = hidden_states
        if len(motions) > len(self.to_k_ip):
            raise ValueError(f"{len(motions)} motion contexts for {len(self.to_k_ip)} motion branches")
        query = attn.to_q(hidden_states)
        out = grouped_attention(query, attn.to_k(main), attn.to_v(main), attn.heads)
        for ctx, to_k, to_v, scale in zip(motions, self.to_k_ip, self.to_v_ip, self.scale):
            if scale == 0:
                continue
            out = out + scale * grouped_attention(query, to_k(ctx), to_v(ctx), attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_motion_processors(model: nn.Module, branches: int = 1, scale: float | Sequence[float] = 1.0) -> int:
    """Put a :class:`DecoupledCrossAttnProcessor` on every cross-attention ``attn2`` of ``model`` (built on the
    current default device). Returns how many were installed."""
    from diffusers.models.attention_processor import Attention

    n = 0
    for name, module in model.named_modules():
        if isinstance(module, Attention) and name.rsplit(".", 1)[-1] == "attn2" and module.is_cross_attention:
            module.set_processor(DecoupledCrossAttnProcessor(module.to_q.out_features, module.to_k.in_features,
                                                             branches, scale))
            n += 1
    return n
