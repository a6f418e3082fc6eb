"""Multi-head attention with diffusers key names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    """Multi-head (cross-)attention: ``to_q``, ``to_k``, ``to_v`` (bias if ``bias``), ``to_out.0`` (bias if
    ``out_bias``), ``to_out.1`` a no-op dropout kept for the key layout.

    ``query_dim`` -> inner width ``heads * dim_head`` -> ``out_dim`` (default ``query_dim``); keys/values come from
    ``context`` (width ``context_dim``, default ``query_dim``) or, without context, from the queries' tokens. No
    internal residual.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 out_dim: int | None = None, bias: bool = False, out_bias: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, out_dim or query_dim, bias=out_bias), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, Lq, query_dim), context: (B, Lk, context_dim) -> (B, Lq, out_dim)
        context = x if context is None else context
        out = multihead_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)
