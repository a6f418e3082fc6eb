"""HelloMeme exact fast paths against the plain computation they replace (same weights, same inputs).

* motion (v5 ``AnchoredMotionModule``): ``attn_pad`` computes the pads' positions only where the kept frames need
  them; the result equals running the diffusers transformer over all F + 2 frames and dropping the pads.
"""
from __future__ import annotations

import pytest
import torch

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
