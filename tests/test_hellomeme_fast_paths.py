"""HelloMeme exact fast paths against the plain computation they replace (same weights, same inputs).

* motion (v5 ``AnchoredMotionModule``): ``attn_pad`` computes the pads' positions only where the kept frames need
  them; the result equals running the diffusers transformer over all F + 2 frames and dropping the pads.
* reference knitting: a reference-cache entry wrapped as ``ReferenceFeatures`` gives the same output as the bare
  tensor (the reference side computed once and reused), for v5 / v3 reference attention and the v5b/v5c module,
  per-clip references over several frames and the CFG batch; the side is computed once per run, not per call.
"""
from __future__ import annotations

import pytest
import torch

from portrait_animation.sk_attention import knitting
from portrait_animation.sk_attention.knitting import (KnittedReferenceAttention, KnittedReferenceModule,
                                                       ReferenceFeatures, prepared_reference_cache)
from portrait_animation.sk_attention.motion import AnchoredMotionModule, temporal_attention


def _randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def _full_motion(module: AnchoredMotionModule, hidden, pads, num_frames):
    """The released computation: attn_pad over [pad_first, frames, pad_last] in '(b f)' layout, pads dropped, the
    input added again, then attn1 over the frames."""
    bf, c, h, w = hidden.shape
    b = bf // num_frames
    x = hidden
    if pads is not None:
        frames = hidden.reshape(b, num_frames, c, h, w)
        p = pads.permute(0, 2, 1, 3, 4)
        seq = torch.cat([p[:, :1], frames, p[:, -1:]], dim=1).reshape(b * (num_frames + 2), c, h, w)
        seq = module.attn_pad(seq, num_frames=num_frames + 2).reshape(b, num_frames + 2, c, h, w)
        x = seq[:, 1:-1].reshape(bf, c, h, w) + hidden
    return module.attn1(x, num_frames=num_frames)


@pytest.mark.parametrize("batch,frames,size", [(1, 3, 8), (2, 4, (6, 10))])
def test_kept_frame_motion_equals_full_path(batch, frames, size):
    torch.manual_seed(0)
    h, w = (size, size) if isinstance(size, int) else size
    module = _randomized(AnchoredMotionModule(32, num_attention_heads=4))
    hidden = torch.randn(batch * frames, 32, h, w)
    pads = torch.randn(batch, 32, 2, h, w)
    with torch.no_grad():
        for p in (pads, None):
            out, ref = module(hidden, p, None, frames), _full_motion(module, hidden, p, frames)
            assert out.shape == ref.shape and out.is_contiguous()
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
            # the pads change the result (the kept frames attend to them)
        assert not torch.allclose(module(hidden, pads, None, frames), module(hidden, None, None, frames), atol=1e-3)


def test_temporal_attention_keeps_requested_frames():
    torch.manual_seed(1)
    module = _randomized(AnchoredMotionModule(32, num_attention_heads=4), seed=1)
    clip = torch.randn(2, 5, 32, 4, 4)  # (B, F, C, H, W)
    with torch.no_grad():
        full = module.attn_pad(clip.reshape(10, 32, 4, 4), num_frames=5).reshape(2, 5, 32, 4, 4)
        torch.testing.assert_close(temporal_attention(module.attn_pad, clip), full, atol=0, rtol=0)
        kept = temporal_attention(module.attn_pad, clip, keep=slice(1, 4))
    assert kept.shape == (2, 3, 32, 4, 4)
    torch.testing.assert_close(kept, full[:, 1:4], atol=2e-5, rtol=1e-5)


def _repeat_knit(module, hidden, ref, num_frames):
    """The plain computation: the per-clip reference repeated over its frames, the module run on per-frame pairs."""
    per_frame = ref.repeat_interleave(hidden.shape[0] // ref.shape[0], dim=0)
    return module(hidden, per_frame, num_frames)


@pytest.mark.parametrize("block", ["v5", "v3", "v5b"])
def test_prepared_reference_equals_bare_tensor(block):
    torch.manual_seed(2)
    make = {"v5": lambda: KnittedReferenceAttention(32, 4),
            "v3": lambda: KnittedReferenceAttention(32, 4, position_table_length=128, unused_time_embed_dim=None),
            "v5b": lambda: KnittedReferenceModule(32, 4)}[block]
    module = _randomized(make(), seed=3)
    frames = 3
    hidden = torch.randn(2 * frames, 32, 8, 8)  # CFG batch of one clip: [uncond, cond] x 3 frames, '(b f)'
    ref = torch.stack([torch.zeros(32, 8, 8), torch.randn(32, 8, 8)])  # uncond reference: cache of a zero latent
    prepared = ReferenceFeatures(ref)
    with torch.no_grad():
        bare = module(hidden, ref, frames)
        first, again = module(hidden, prepared, frames), module(hidden, prepared, frames)
        per_frame = _repeat_knit(module, hidden, ref, frames)
    torch.testing.assert_close(first, bare, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    torch.testing.assert_close(bare, per_frame, atol=1e-5, rtol=1e-5)
    # the reference really enters: another reference changes the output
    with torch.no_grad():
        other = module(hidden, ReferenceFeatures(torch.randn_like(ref)), frames)
    assert not torch.allclose(other, first, atol=1e-3)


def test_reference_side_computed_once_per_run(monkeypatch):
    module = _randomized(KnittedReferenceModule(32, 4), seed=4)
    calls = []
    real = knitting.knit_reference
    monkeypatch.setattr(knitting, "knit_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = ReferenceFeatures(torch.randn(1, 32, 4, 4))
    with torch.no_grad():
        for _ in range(3):  # three steps
            module(torch.randn(2, 32, 4, 4), ref.to(dtype=torch.float32), 2)
    assert len(calls) == 1
    with torch.no_grad():
        module(torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4), 2)  # a bare tensor: computed per call
    assert len(calls) == 2


def test_prepared_cache_only_for_knitting_adapters():
    class Adapter(torch.nn.Module):
        def __init__(self, blocks):
            super().__init__()
            self.reference_modules_up = torch.nn.ModuleList(blocks)

    cache = {"up_0": torch.randn(1, 32, 4, 4)}
    wrapped = prepared_reference_cache(cache, Adapter([KnittedReferenceAttention(32, 4)]))
    assert isinstance(wrapped["up_0"], ReferenceFeatures) and wrapped["up_0"].features is cache["up_0"]
    other = prepared_reference_cache(cache, Adapter([KnittedReferenceAttention(32, 4)]), Adapter([torch.nn.Identity()]))
    assert other["up_0"] is cache["up_0"]
    assert prepared_reference_cache(cache, None)["up_0"] is cache["up_0"]


def test_motion_attention_follows_the_speed_options_kernel():
    from portrait_animation.layers.attention import attention_kernel

    module = _randomized(AnchoredMotionModule(32, num_attention_heads=4), seed=5)
    seen = []

    def spy(q, k, v):
        seen.append((q.shape[2], k.shape[2]))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    hidden, pads = torch.randn(3, 32, 4, 4), torch.randn(1, 32, 2, 4, 4)
    with torch.no_grad():
        plain = module(hidden, pads, None, 3)
        with attention_kernel(spy):
            spied = module(hidden, pads, None, 3)
    # attn_pad: 5 frames attend to 5, then 3 kept queries to 5; attn1: 3 to 3 twice
    assert seen == [(5, 5), (3, 5), (3, 3), (3, 3)]
    torch.testing.assert_close(spied, plain, atol=0, rtol=0)
