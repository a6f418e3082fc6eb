"""The exact path's small-head CPU attention (layers.attention.small_head_attention): the same values as SDPA to
float32 rounding, taken only where it applies (small heads, enough tokens, float32, no gradient, no mask, SDPA not
restricted to one backend, no installed kernel)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from portrait_animation.layers import attention as la


@pytest.mark.parametrize("shape", [(2, 8, 288, 288, 4), (1, 3, 20, 17, 8), (3, 2, 16, 600, 4), (40, 8, 64, 64, 8)])
def test_small_head_attention_equals_sdpa(shape):
    b, h, lq, lk, d = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g) * 3 for n in (lq, lk, lk))
    out = la.small_head_attention(q, k, v)
    assert out.shape == (b, h, lq, d)
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    sdpa_error = (F.scaled_dot_product_attention(q, k, v) - reference).abs().max().item()
    error = (out - reference).abs().max().item()
    assert error <= 4 * sdpa_error + 1e-6, (error, sdpa_error)  # float32 rounding, as SDPA's own
    # strided inputs (heads split from tokens) give the same values
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(la.small_head_attention(qt, k, v), out, rtol=0, atol=0)


def test_attention_takes_the_small_head_path_only_where_it_applies(monkeypatch):
    calls = []
    real = la.small_head_attention
    monkeypatch.setattr(la, "small_head_attention", lambda q, k, v: calls.append(q.shape) or real(q, k, v))
    q, k, v = (torch.randn(2, 4, 32, 8) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(la.attention(q, k, v), exact, rtol=0, atol=1e-5)
    assert len(calls) == 1
    others = [
        lambda: la.attention(q, k[:, :, :8], v[:, :, :8]),                           # few keys
        lambda: la.attention(q[:, :, :8], k, v),                                     # few queries
        lambda: la.attention(*(torch.randn(2, 4, 32, 16) for _ in range(3))),         # wide heads
        lambda: la.attention(q.double(), k.double(), v.double()),                    # not float32
        lambda: la.attention(q, k, v, attn_mask=torch.zeros(32, 32)),                # masked
        lambda: la.attention(q.requires_grad_(), k, v),                              # gradient
    ]
    for call in others:
        call()
    q.requires_grad_(False)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):  # one backend asked for
        la.attention(q, k, v)
    with la.attention_kernel(lambda q, k, v: F.scaled_dot_product_attention(q, k, v)):  # a kernel installed
        assert torch.equal(la.attention(q, k, v), exact)
    assert len(calls) == 1
