"""MEMO's exact fast paths: reference rows resolved once per call, reference keys/values projected once per
reference element, the per-clip ``reference_cache``, past frames read only when the temporal memory is updated, and
batched VAE calls with the reference image encoded once per run."""
from __future__ import annotations

import pytest
import torch

from portrait_animation.memo.diffusion_net import (DiffusionNet, DiffusionNetConfig, ReferenceAttentionBlock,
                                                   ReferenceRows)
from portrait_animation.motion import memo_sampler as ms
from portrait_animation.motion.memory_attention import MemoryTemporalModule

SMALL = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
             up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), audio_attention_dim=16, cross_attention_dim=24,
             motion_module_resolutions=(1, 2))


def _naive_reference_attention(block: ReferenceAttentionBlock, x, ref_img, context, uncond, batch, frames, faithful):
    """The per-row formulation: every row gets its own tiled copy of the reference tokens, boolean masks pick rows."""
    reference = ref_img.repeat(frames, 1, 1) if faithful else ref_img.repeat_interleave(frames, dim=0)
    n = block.norm1(x)
    attn = torch.empty_like(n)
    cond = ~uncond
    if cond.any():
        attn[cond] = block.attn1(n[cond], torch.cat([n[cond], reference[cond]], dim=1))
    if uncond.any():
        attn[uncond] = block.attn1(n[uncond])
    x = attn + x
    x = block.attn2(block.norm2(x), context) + x
    return block.ff(block.norm3(x)) + x


@pytest.mark.parametrize("faithful", [True, False])
@pytest.mark.parametrize("mask", ["cfg", "scattered", "none", "all_uncond"])
@torch.no_grad()
def test_reference_attention_matches_per_row_tiling(faithful, mask):
    torch.manual_seed(0)
    b, f, tokens, dim = 2, 3, 10, 16
    block = ReferenceAttentionBlock(dim, 4, 24).double().eval()
    x = torch.randn(b * f, tokens, dim, dtype=torch.float64)
    ref_img = torch.randn(b, 7, dim, dtype=torch.float64)
    context = torch.randn(b * f, 4, 24, dtype=torch.float64)
    uncond = {"cfg": torch.tensor([1, 1, 1, 0, 0, 0]), "scattered": torch.tensor([0, 1, 1, 0, 1, 0]),
              "none": torch.zeros(b * f), "all_uncond": torch.ones(b * f)}[mask].bool()
    rows = ReferenceRows.build(uncond, b, f, faithful, x.device)
    if mask == "cfg":
        assert rows.cond == slice(3, 6) and rows.uncond == slice(0, 3)
        # faithful: cond rows 3, 4, 5 use elements 1, 0, 1 (row r -> r % B); else all use element 1
        assert rows.elements.tolist() == [1, 0, 1] if faithful else rows.elements == 1
    got = block(x, ref_img, context, rows)
    want = _naive_reference_attention(block, x, ref_img, context, uncond, b, f, faithful)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def _inputs(net: DiffusionNet, frames=2, past=2, size=8, seed=0):
    from portrait_animation.memo.reference_net import ReferenceNet, ReferenceNetConfig

    g = torch.Generator().manual_seed(seed)
    two_d = {k: tuple(n.replace("3D", "2D") for n in v) if k.endswith("block_types") else v for k, v in SMALL.items()}
    rcfg = ReferenceNetConfig(**{k: v for k, v in two_d.items() if k in ReferenceNetConfig.__dataclass_fields__})
    torch.manual_seed(seed)
    ref = ReferenceNet(rcfg).eval()
    tokens = torch.randn(2, 4, 24, generator=g)
    feats = ref(torch.randn(2 * (1 + past), 4, size, size, generator=g), 0.0, tokens)
    sample = torch.randn(2, 4, frames, size, size, generator=g)
    audio = torch.randn(2, frames, 32, 16, generator=g)
    uc = torch.cat([torch.ones(frames), torch.zeros(frames)]).bool()
    return dict(ref_features=feats, encoder_hidden_states=tokens, audio_embedding=audio,
                audio_emotion=torch.tensor([9, 3]), uc_mask=uc), sample


@torch.no_grad()
def test_reference_cache_gives_the_same_outputs_and_holds_per_clip_state():
    torch.manual_seed(1)
    plain = DiffusionNet(DiffusionNetConfig(**SMALL)).eval()
    cached = DiffusionNet(DiffusionNetConfig(**SMALL)).eval()
    cached.load_state_dict(plain.state_dict())
    kw, sample = _inputs(plain)
    cache: dict = {}
    # clip 0 (the memory rebuilt from the motion frames at every step), then a later clip's update and reuse steps
    for step, (new_audio, update) in enumerate([(True, True), (True, False), (True, False), (False, True),
                                                (False, False)]):
        t = torch.tensor(900.0 - 200 * step)
        want = plain(sample * (step + 1), timestep=t, is_new_audio=new_audio, update_past_memory=update, **kw)
        got = cached(sample * (step + 1), timestep=t, is_new_audio=new_audio, update_past_memory=update,
                     reference_cache=cache, **kw)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        for (_, a), (_, b) in zip(plain.memory_layers(), cached.memory_layers()):
            torch.testing.assert_close(b.memory.kv, a.memory.kv, rtol=0, atol=0)
    assert "rows" in cache
    blocks = sum(isinstance(m, ReferenceAttentionBlock) for m in cached.modules())
    temporal = sum(isinstance(m, MemoryTemporalModule) for m in cached.modules())
    assert blocks == 6 and temporal == 11
    assert sum(1 for k in cache if k[0] == "reference_kv") == blocks  # reference keys/values, once per clip
    assert sum(1 for k in cache if k[0] == "fresh_memory") == temporal  # the memory built from the motion frames


@torch.no_grad()
def test_past_frames_are_read_only_for_a_memory_update():
    torch.manual_seed(2)
    module = MemoryTemporalModule(32).eval()
    x = torch.randn(2 * 3, 32, 4, 4)
    motion = torch.randn(2 * 2, 32, 4, 4)
    calls = []

    def lazy():
        calls.append(1)
        return motion

    module.forward_rows(x, lazy, 2, is_new_audio=True)
    assert len(calls) == 1
    reused = module.forward_rows(x, lazy, 2, is_new_audio=False, update_past_memory=False)
    assert len(calls) == 1  # memory reused: the past frames are not touched
    eager = module.forward_rows(x, motion, 2, is_new_audio=False, update_past_memory=False)
    torch.testing.assert_close(reused, eager, rtol=0, atol=0)
    module.forward_rows(x, lazy, 2, is_new_audio=False, update_past_memory=True)
    assert len(calls) == 2


class _CountingVae(torch.nn.Module):
    """A stand-in with the AutoencoderKL interface whose output depends on each frame alone (per-frame conv)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.enc = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.dec = torch.nn.ConvTranspose2d(4, 3, 8, stride=8)
        self.encoded: list[int] = []
        self.decoded: list[int] = []

    def encode(self, x):
        self.encoded.append(x.shape[0])
        return type("Out", (), {"latent_dist": type("Dist", (), {"mean": self.enc(x)})()})()

    def decode(self, z):
        self.decoded.append(z.shape[0])
        return type("Out", (), {"sample": torch.tanh(self.dec(z))})()


@torch.no_grad()
def test_vae_batches_match_frame_by_frame():
    vae = _CountingVae()
    frames = torch.rand(7, 3, 16, 16) * 2 - 1
    one = ms.vae_encode_frames(vae, frames)
    assert vae.encoded == [1] * 7
    vae.encoded.clear()
    three = ms.vae_encode_frames(vae, frames, batch=3)
    assert vae.encoded == [3, 3, 1]
    torch.testing.assert_close(three, one, rtol=1e-6, atol=1e-6)
    dec_one = ms.vae_decode_frames(vae, one)
    dec_four = ms.vae_decode_frames(vae, one, batch=4)
    assert vae.decoded == [1] * 7 + [4, 3]
    torch.testing.assert_close(dec_four, dec_one, rtol=1e-6, atol=1e-6)


class _StubNets:
    """Reference Net / Diffusion Net / image_proj stand-ins: enough for the sampler's clip loop."""

    class Diffusion(torch.nn.Module):
        max_clip_frames = None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))
            self.caches = []

        def reset_memory(self):
            pass

        def forward(self, sample, ref_features, t, tokens, audio, emotion, uc_mask=None, reference_cache=None, **kw):
            self.caches.append(reference_cache)
            return sample * self.w + ref_features.mean()

    class Proj(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, face):
            return face[:, :8].reshape(1, 2, 4) * self.w


@torch.no_grad()
def test_sampler_encodes_the_reference_once_per_run():
    vae = _CountingVae()
    net = _StubNets.Diffusion()
    seen = {}
    settings = ms.MemoSamplerSettings(steps=2, frames_per_clip=3, num_past_frames=3, vae_batch=2)
    sampler = ms.MemoSampler(vae, lambda lat, t, tok, faithful_tiling: lat, net, _StubNets.Proj(), settings)
    ref = torch.rand(1, 3, 16, 16) * 2 - 1
    clips = list(sampler.clips(ref, torch.randn(1, 512), torch.randn(1, 9, 2, 4), noise=0,
                               inspect=lambda name, t: seen.__setitem__(name, t.clone())))
    assert len(clips) == 3
    # clip 0: the reference, then its N copies as past frames (2 per call); clips 1, 2: only the past frames
    assert vae.encoded == [1, 2, 1] + [2, 1] * 2
    assert vae.decoded == [2, 1] * 3
    # each clip's [reference, past] latents equal the original's frame-by-frame encoding of the preprocessed batch
    past = ref.repeat(3, 1, 1, 1)
    for k in range(3):
        batch = ms.vae_image_preprocess(torch.cat([ref, past]))
        torch.testing.assert_close(seen[f"clip{k}.ref_latents"], ms.vae_encode_frames(vae, batch), rtol=1e-6,
                                   atol=1e-6)
        past = clips[k].frames[0].transpose(0, 1)[-3:] * 2 - 1
    # one reference cache per clip, shared by its steps
    assert net.caches[0] is net.caches[1] and net.caches[1] is not net.caches[2]
