"""MEMO's CPU speed paths compute what the plain formulation computes: the memory attention's token layout (head
widths up to ``SMALL_HEAD_WIDTH``) against the heads-as-rows layout and against the per-head formula, including a
state handed from one layout to the other."""
from __future__ import annotations

import copy

import pytest
import torch

from portrait_animation.motion import memory_attention as ma


def _per_head_formula(layer: ma.MemoryLinearAttention, x, motion, kv0=None, z0=None):
    """One layer written per sequence and head with explicit loops (new memory from ``motion`` when ``kv0`` is None,
    else decayed and updated); returns the output and the new state."""
    r, f, _ = x.shape
    h, d = layer.heads, layer.dim_head
    heads = lambda t: t.view(t.shape[0], t.shape[1], h, d)  # noqa: E731
    q = torch.softmax(heads(layer.to_q(x)), dim=-1) * layer.scale
    k = torch.softmax(heads(layer.to_k(x)), dim=1)
    v = heads(layer.to_v(x))
    km = torch.softmax(heads(layer.to_k(motion)), dim=1)
    vm = heads(layer.to_v(motion))
    n = motion.shape[1]
    out = torch.empty(r, f, h, d)
    kv_state = torch.empty(r * h, d, d)
    z_state = torch.empty(r * h, 1, d)
    for s in range(r):
        for j in range(h):
            kv_new = sum((0.9 ** (n - 1 - i)) ** 2 * torch.outer(km[s, i, j], vm[s, i, j]) for i in range(n))
            z_new = sum(0.9 ** (n - 1 - i) * km[s, i, j] for i in range(n))
            if kv0 is not None:
                kv_new = kv_new + 0.9 ** n * kv0[s * h + j]
                z_new = z_new + 0.9 ** n * z0[s * h + j, 0]
            kv_state[s * h + j], z_state[s * h + j, 0] = kv_new, z_new
            kv = 0.9 * kv_new + sum(torch.outer(k[s, t, j], v[s, t, j]) for t in range(f))
            z = 0.9 * z_new + k[s, :, j].sum(0)
            for t in range(f):
                out[s, t, j] = q[s, t, j] @ kv / torch.clamp(q[s, t, j] @ z, min=ma.NORMALISER_FLOOR)
    return layer.to_out[0](out.reshape(r, f, h * d)), kv_state, z_state


@pytest.mark.parametrize("dim_head", [4, 8])
@torch.no_grad()
def test_token_layout_matches_the_per_head_formula(dim_head):
    torch.manual_seed(0)
    layer = ma.MemoryLinearAttention(dim_head * 4, 4, dim_head).eval()
    assert layer.small_heads
    x, motion, motion2 = torch.randn(6, 5, dim_head * 4), torch.randn(6, 3, dim_head * 4), torch.randn(6, 3,
                                                                                                        dim_head * 4)
    out, kv, z = _per_head_formula(layer, x, motion)
    torch.testing.assert_close(layer(x, motion, is_new_audio=True), out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.memory.kv, kv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.memory.z, z, rtol=1e-5, atol=1e-6)
    out2, kv2, z2 = _per_head_formula(layer, x, motion2, kv, z)  # decay and absorb new past frames
    torch.testing.assert_close(layer(x, motion2, is_new_audio=False, update_past_memory=True), out2, rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(layer.memory.kv, kv2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frames", [4, 16])
@torch.no_grad()
def test_token_layout_equals_heads_as_rows(frames, monkeypatch):
    torch.manual_seed(1)
    module = ma.MemoryTemporalModule(64, ma.MotionModuleConfig()).eval()  # 8 heads of width 8
    wide = copy.deepcopy(module)
    clips = [(torch.randn(2, 64, frames, 3, 3), torch.randn(2, 64, 4, 3, 3)) for _ in range(2)]
    flags = [(True, True), (True, False), (False, True), (False, False)]  # new clip, update, memory reused

    def run(m, small):
        monkeypatch.setattr(ma, "SMALL_HEAD_WIDTH", 8 if small else 0)
        assert all(layer.small_heads == small for layer in m.memory_layers())
        return [m(h, mo, new, upd) for h, mo in clips for new, upd in flags]

    for a, b in zip(run(module, True), run(wide, False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for la, lb in zip(module.memory_layers(), wide.memory_layers()):
        assert la.memory.kv.shape == lb.memory.kv.shape and la.memory.z.shape == lb.memory.z.shape
        torch.testing.assert_close(la.memory.kv, lb.memory.kv, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(la.memory.z, lb.memory.z, rtol=1e-5, atol=1e-6)
    # a state built by the heads-as-rows path, handed to a fresh module, is read by the token layout
    h, mo = clips[0]
    monkeypatch.setattr(ma, "SMALL_HEAD_WIDTH", 0)
    expected = wide(h, mo, False, False)
    fresh = copy.deepcopy(module)
    for lf, lw in zip(fresh.memory_layers(), wide.memory_layers()):
        lf.memory = lw.memory.clone()
    monkeypatch.setattr(ma, "SMALL_HEAD_WIDTH", 8)
    torch.testing.assert_close(fresh(h, mo, False, False), expected, rtol=1e-5, atol=1e-6)
