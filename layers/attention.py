"""Multi-head attention with diffusers key names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), and the one place the
pack's own attention kernels are called (:func:`attention`).

:func:`attention` is PyTorch's ``scaled_dot_product_attention`` unless a caller installed another kernel for the
current context with :func:`attention_kernel` (the speed options do: SageAttention, ComfyUI's configured attention;
``runtime/speed.py``). The kernel is a context variable, so concurrent runs in other threads keep their own.

Without such a kernel, small heads on the CPU (head width <= :data:`SMALL_HEAD_WIDTH`, at least
:data:`SMALL_HEAD_MIN_TOKENS` queries and keys, float32, no gradient, SDPA not restricted to one backend) take
:func:`small_head_attention`: the same softmax attention as two batched matmuls and a softmax over blocks of heads.
PyTorch's CPU flash kernel is slower at such widths (measured 1.2-2.9x at widths 4-8, 16-288 queries, 16-512 keys,
one thread; with fewer than 16 keys it is the faster one); the values agree with SDPA to float32 rounding (~1e-6).
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


# the small-head CPU path (see the module docstring): widths, token counts and the score block it takes
SMALL_HEAD_WIDTH = 8
SMALL_HEAD_MIN_TOKENS = 16
SMALL_HEAD_BLOCK_BYTES = 1 << 22  # scores of this many bytes per block of heads (one head at least)


def _takes_small_head_path(q: torch.Tensor, k: torch.Tensor) -> bool:
    lq, d = q.shape[-2:]
    lk = k.shape[-2]
    return (d <= SMALL_HEAD_WIDTH and lq >= SMALL_HEAD_MIN_TOKENS and lk >= SMALL_HEAD_MIN_TOKENS
            and q.dim() == 4 and q.device.type == "cpu" and q.dtype == torch.float32
            and k.dtype == torch.float32 and lq * lk * 4 <= SMALL_HEAD_BLOCK_BYTES
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
            and torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled())


def small_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention (scale 1/sqrt(d)) as ``softmax(q k^T) v`` per block of heads: q (B, heads, Lq, d), k/v
    (B, heads, Lk, d) -> (B, heads, Lq, d). The scores of a block stay in one reused buffer; ``v^T p^T`` gives the
    output transposed (a wide product instead of a d-column one). No gradient (``out=`` products)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    n = b * h
    q3, k3, v3 = q.reshape(n, lq, d), k.reshape(n, lk, d), v.reshape(n, lk, d)
    step = min(n, max(1, SMALL_HEAD_BLOCK_BYTES // (lq * lk * q.element_size())))
    scores = torch.empty(step, lq, lk, dtype=q.dtype, device=q.device)
    out = torch.empty(n, d, lq, dtype=q.dtype, device=q.device)  # transposed per head
    scale = d ** -0.5
    for i in range(0, n, step):
        j = min(n, i + step)
        s = scores[:j - i]
        torch.baddbmm(s, q3[i:j], k3[i:j].transpose(1, 2), beta=0, alpha=scale, out=s)
        torch.softmax(s, -1, out=s)
        torch.bmm(v3[i:j].transpose(1, 2), s.transpose(1, 2), out=out[i:j])
    return out.view(b, h, d, lq).transpose(2, 3)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(d): q (B, heads, Lq, d), k/v (B, heads, Lk, d) -> (B, heads, Lq, d).

    Masked calls always take PyTorch SDPA (the optional kernels are unmasked); without a kernel, small heads on the
    CPU take :func:`small_head_attention` (module docstring)."""
    kernel = _KERNEL.get()
    if attn_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if kernel is None:
        return exact_attention(q, k, v)
    return kernel(q, k, v)


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The exact path's kernel (no kernel installed): :func:`small_head_attention` where it applies (module
    docstring), PyTorch SDPA elsewhere."""
    if _takes_small_head_path(q, k):
        return small_head_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


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
