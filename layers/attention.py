"""Multi-head attention with diffusers key names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), and the one place the
pack's own attention kernels are called (:func:`attention`).

:func:`attention` is PyTorch's ``scaled_dot_product_attention`` unless a caller installed another kernel for the
current context with :func:`attention_kernel` (the speed options do: SageAttention, ComfyUI's configured attention;
``runtime/speed.py``). The kernel is a context variable, so concurrent runs in other threads keep their own.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

# kernel(q, k, v) on (B, heads, L, d) tensors -> (B, heads, Lq, d); None means PyTorch SDPA
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_KERNEL: contextvars.ContextVar[Optional[AttentionKernel]] = contextvars.ContextVar("portrait_attention_kernel",
                                                                                     default=None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(d): q (B, heads, Lq, d), k/v (B, heads, Lk, d) -> (B, heads, Lq, d).

    Masked calls always take PyTorch SDPA (the optional kernels are unmasked)."""
    kernel = _KERNEL.get()
    if kernel is None or attn_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return kernel(q, k, v)


def current_attention_kernel() -> Optional[AttentionKernel]:
    return _KERNEL.get()


@contextlib.contextmanager
def attention_kernel(kernel: Optional[AttentionKernel]) -> Iterator[None]:
    """Use ``kernel`` for :func:`attention` inside the block (``None``: PyTorch SDPA)."""
    token = _KERNEL.set(kernel)
    try:
        yield
    finally:
        _KERNEL.reset(token)


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
    return merge_heads(attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)))


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
