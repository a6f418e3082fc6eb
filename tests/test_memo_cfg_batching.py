"""MEMO's two CFG batchings on the small stand-in models.

``faithful=False`` (the corrected batching) must equal an independent computation in which the two CFG halves never
share a batch: each half runs the Reference Net with its own identity tokens, the Diffusion Net with its own
reference features and its own temporal memory, and the halves meet only in ``u + scale * (c - u)``. The released
batching (``faithful=True``, the default) mixes the halves, so it must differ from that computation.
"""
from __future__ import annotations

import copy

import pytest
import torch

from portrait_animation.loaders.store import ModelStore
from portrait_animation.memo.pipeline import load_memo_bundle
from portrait_animation.motion import memo_sampler as ms
from portrait_animation.runtime import StandaloneRuntime

from helpers.tiny_models import write_memo_models
from parity.runner import DEFAULT_PARITY_ROOT

FRAMES, PAST, CLIPS, STEPS, SCALE, SIZE = 2, 2, 2, 2, 3.5, 64  # F even: the released tiling alternates halves


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_memo_models(root, DEFAULT_PARITY_ROOT)
    b = load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), ModelStore.at(root), dtype="fp32",
                         emotion_model=False, identity=False)
    # float64 weights: batched and unbatched kernels then agree to ~1e-12, so the comparison can be tight (in float32
    # their rounding differences grow to ~1e-4 over the steps of these random tiny networks)
    return tuple(m.double() for m in (b.vae.module, b.reference_net.module, b.diffusion_net.module,
                                      b.image_proj.module))


@pytest.fixture(scope="module")
def inputs(nets):
    gen = torch.Generator().manual_seed(7)
    token_dim = nets[2].config.audio_attention_dim
    latent = SIZE // 8
    return {
        "ref_image": torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1,  # float32, as the sampler takes it
        "face": torch.randn(1, 512, generator=gen, dtype=torch.float64),
        "audio": torch.randn(1, CLIPS * FRAMES, 32, token_dim, generator=gen, dtype=torch.float64),
        "emotions": torch.tensor([5, 1, 6, 6]),  # per frame; the clip label is the mode (ties: the smaller)
        "noise": [torch.randn(1, 4, FRAMES, latent, latent, generator=gen) for _ in range(CLIPS)],
    }


@pytest.fixture(scope="module")
def released(nets, inputs):
    return _sampler_latents(nets, inputs, faithful=True)


def _sampler_latents(nets, inputs, faithful: bool) -> list[torch.Tensor]:
    settings = ms.MemoSamplerSettings(steps=STEPS, guidance_scale=SCALE, frames_per_clip=FRAMES,
                                      num_past_frames=PAST, faithful=faithful)
    sampler = ms.MemoSampler(*nets, settings)
    clips = sampler.clips(inputs["ref_image"], inputs["face"], inputs["audio"], inputs["emotions"],
                          noise=lambda k, shape: inputs["noise"][k])
    return [clip.latents for clip in clips]


@torch.no_grad()
def _separate_halves(nets, inputs) -> list[torch.Tensor]:
    """Each CFG half alone (batch 1): own identity tokens, own Reference Net features, own temporal memory."""
    vae, reference_net, diffusion_net, image_proj = nets
    face = inputs["face"]
    halves = {
        "uncond": dict(net=copy.deepcopy(diffusion_net), tokens=image_proj(torch.zeros_like(face)), uncond=True),
        "cond": dict(net=copy.deepcopy(diffusion_net), tokens=image_proj(face), uncond=False),
    }
    for h in halves.values():
        h["net"].reset_memory()
    schedule = ms.flow_match_schedule(STEPS)
    ref = inputs["ref_image"]
    past = ref.repeat(PAST, 1, 1, 1)
    out = []
    for k in range(CLIPS):
        ref_latents = ms.vae_encode_frames(vae, torch.cat([ref, past])).float()  # (1 + N, 4, h, w)
        for h in halves.values():
            # one token set for every row of the reference batch
            h["features"] = reference_net(ref_latents.to(h["tokens"].dtype), 0.0, h["tokens"])
        clip_audio = inputs["audio"][:, k * FRAMES:(k + 1) * FRAMES]
        label = int(torch.bincount(inputs["emotions"][k * FRAMES:(k + 1) * FRAMES]).argmax())
        x = inputs["noise"][k]
        for step in range(STEPS):
            t = schedule.timesteps[step]
            v = {}
            for name, h in halves.items():
                uncond = h["uncond"]
                v[name] = h["net"](x, h["features"], t, h["tokens"],
                                   torch.zeros_like(clip_audio) if uncond else clip_audio,
                                   torch.tensor([ms.NULL_EMOTION if uncond else label]),
                                   uc_mask=torch.full((FRAMES,), uncond), is_new_audio=k == 0,
                                   update_past_memory=step == 0).float()
            velocity = v["uncond"] + SCALE * (v["cond"] - v["uncond"])
            x = x + (schedule.sigmas[step + 1] - schedule.sigmas[step]) * velocity
        out.append(x)
        frames = ms.vae_decode_frames(vae, x[0].transpose(0, 1)).float()
        past = frames[-PAST:] * 2 - 1
    return out


def test_corrected_batching_equals_separate_halves(nets, inputs, released):
    expected = _separate_halves(nets, inputs)
    corrected = _sampler_latents(nets, inputs, faithful=False)
    tol = dict(rtol=1e-6, atol=1e-6)  # the sampler keeps latents in float32: the same casts on both sides
    for k in range(CLIPS):
        torch.testing.assert_close(corrected[k], expected[k], **tol)
    # the released batching is measurably different, so the comparison above can tell the two apart
    gap = max((r - e).abs().max().item() for r, e in zip(released, expected))
    assert gap > 100 * tol["atol"], gap


def test_released_batching_is_the_sampler_default(nets, inputs, released):
    assert ms.MemoSamplerSettings().faithful is True
    default = ms.MemoSampler(*nets, ms.MemoSamplerSettings(steps=STEPS, guidance_scale=SCALE, frames_per_clip=FRAMES,
                                                           num_past_frames=PAST))
    latents = [c.latents for c in default.clips(inputs["ref_image"], inputs["face"], inputs["audio"],
                                                inputs["emotions"], noise=lambda k, shape: inputs["noise"][k])]
    assert len(latents) == CLIPS and all(torch.equal(a, b) for a, b in zip(latents, released))
