"""The opt-in accelerations of runtime/speed.py: attention kernels reach every attention (the pack's own and
diffusers'), are undone afterwards, and compiled blocks compute what the eager ones do."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from portrait_animation.layers.attention import Attention, attention, attention_kernel, current_attention_kernel
from portrait_animation.runtime import speed


class SpyKernel:
    """SDPA that counts its calls (and can perturb its output, to prove the result came through it)."""

    def __init__(self, offset: float = 0.0):
        self.calls, self.offset = 0, offset

    def __call__(self, q, k, v):
        self.calls += 1
        return F.scaled_dot_product_attention(q, k, v) + self.offset


def test_attention_dispatches_to_the_installed_kernel_and_restores_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 16) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    spy = SpyKernel(offset=1.0)
    with attention_kernel(spy):
        assert torch.allclose(attention(q, k, v), exact + 1.0)
        mask = torch.zeros(10, 10)
        assert torch.allclose(attention(q, k, v, attn_mask=mask), exact, atol=1e-6)  # masked: always SDPA
    assert spy.calls == 1
    assert current_attention_kernel() is None
    assert torch.equal(attention(q, k, v), exact)


def test_pack_attention_module_follows_the_kernel():
    torch.manual_seed(0)
    attn = Attention(32, heads=4, dim_head=8)
    x = torch.randn(3, 7, 32)
    exact = attn(x)
    spy = SpyKernel()
    with attention_kernel(spy):
        out = attn(x)
    assert spy.calls == 1 and torch.allclose(out, exact, atol=1e-6)


@pytest.mark.parametrize("cross", [False, True])
def test_kernel_processor_matches_diffusers_and_is_restored(cross):
    from diffusers.models.attention_processor import Attention as DiffusersAttention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = DiffusersAttention(query_dim=40, heads=2, dim_head=20, cross_attention_dim=24 if cross else None)
    model = nn.ModuleDict({"block": nn.ModuleList([attn])})
    x = torch.randn(2, 9, 40)
    context = torch.randn(2, 5, 24) if cross else None
    exact = attn(x, encoder_hidden_states=context)
    spy = SpyKernel()
    with attention_kernel(spy), speed.kernel_processors([model]) as swapped:
        assert swapped == 1
        out = attn(x, encoder_hidden_states=context)
        masked = attn(x, encoder_hidden_states=context,  # masks go to diffusers' own processor
                      attention_mask=torch.zeros(2, 1, 5 if cross else 9))
    assert spy.calls == 1
    assert torch.allclose(out, exact, atol=1e-6)
    assert torch.allclose(masked, exact, atol=1e-5)
    assert type(attn.processor) is AttnProcessor2_0


def test_sage_falls_back_where_it_does_not_apply_and_is_named_when_missing(monkeypatch):
    calls = []
    kernel = speed.SageKernel(lambda *a, **k: calls.append(1))
    q, k, v = (torch.randn(1, 2, 6, 64) for _ in range(3))
    assert torch.allclose(kernel(q, k, v), F.scaled_dot_product_attention(q, k, v))  # CPU fp32: SDPA
    assert (kernel.calls, kernel.fallbacks, calls) == (0, 1, [])
    monkeypatch.setitem(sys.modules, "sageattention", None)  # not installed
    with pytest.raises(ValueError, match="pip install sageattention"):
        speed.attention_kernel_for(speed.SpeedOptions(attention="sage"))


def test_comfy_attention_is_refused_outside_comfyui(monkeypatch):
    monkeypatch.delitem(sys.modules, "comfy.model_management", raising=False)
    with pytest.raises(ValueError, match="only works inside ComfyUI"):
        speed.attention_kernel_for(speed.SpeedOptions(attention="comfy"))


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="unknown attention"):
        speed.SpeedOptions(attention="xformers")
    with pytest.raises(ValueError, match="unknown compile"):
        speed.SpeedOptions(compile="fast")


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down_blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.GELU())])
        self.mid_block = nn.Sequential(nn.Linear(16, 16), nn.SiLU())
        self.up_blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.Tanh())])

    def forward(self, x):
        return self.up_blocks[0](self.mid_block(self.down_blocks[0](x)))


def test_sdpa_backend_option_keeps_outputs():
    torch.manual_seed(0)
    attn = Attention(32, heads=4, dim_head=8)
    x = torch.randn(2, 11, 32)
    exact = attn(x)
    with speed.accelerated(speed.SpeedOptions(attention="sdpa_math"), [attn]) as used:
        assert used.attention == "sdpa_math"
        out = attn(x)
    assert torch.allclose(out, exact, atol=1e-5)


def test_compiled_blocks_match_eager_and_are_undone():
    torch.manual_seed(0)
    model = TinyUNet()
    x = torch.randn(4, 16)
    exact = model(x)
    assert len(speed.denoiser_blocks(nn.ModuleDict({"unet": model}))) == 3
    with speed.accelerated(speed.SpeedOptions(compile="default"), [model]):
        assert all(b._compiled_call_impl is not None for b in speed.denoiser_blocks(model))
        out = model(x)
    assert torch.allclose(out, exact, atol=1e-5)
    assert all(b._compiled_call_impl is None for b in speed.denoiser_blocks(model))


# ---- the samplers take the options --------------------------------------------------------------------------------
def _spy_for_sage(monkeypatch) -> SpyKernel:
    """Make attention 'sage' resolve to an SDPA spy, so a run shows which attention went through the kernel."""
    spy = SpyKernel()
    real = speed.attention_kernel_for
    monkeypatch.setattr(speed, "attention_kernel_for",
                        lambda options: spy if options.attention == "sage" else real(options))
    return spy


def test_hellomeme_video_and_image_route_their_attention_through_the_options(monkeypatch):
    from test_hellomeme_pipeline import computed_controls, reference_image, runtime, text, tiny_models

    from portrait_animation.sk_attention.pipeline_image import generate_image
    from portrait_animation.sk_attention.pipeline_video import VideoGeneration

    spy = _spy_for_sage(monkeypatch)
    models, _ = tiny_models("v5")

    def video(options):
        controls = computed_controls(models, 6, (128, 128))
        return VideoGeneration(models, runtime(), reference_image((128, 128)), text(1), controls,
                               negative_prompt_embeds=text(2), steps=1, guidance_scale=2.0, noise=3,
                               decode=False, speed=options).run()

    with torch.no_grad():
        exact = video(None)
        assert spy.calls == 0
        fast = video(speed.SpeedOptions(attention="sage"))
    assert spy.calls > 0
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)
    from diffusers.models.attention_processor import AttnProcessor2_0

    attention_modules = speed.diffusers_attention_modules(models.denoiser)
    assert attention_modules and all(type(m.processor) is AttnProcessor2_0 for m in attention_modules)

    image_models, _ = tiny_models("v5", video=False)
    calls = spy.calls
    with torch.no_grad():
        exact = generate_image(image_models, runtime(), reference_image((128, 128)), text(1),
                               computed_controls(image_models, 1, (128, 128)), negative_prompt_embeds=text(2),
                               steps=2, guidance_scale=1.5, noise=0).image
        fast = generate_image(image_models, runtime(), reference_image((128, 128)), text(1),
                              computed_controls(image_models, 1, (128, 128)), negative_prompt_embeds=text(2),
                              steps=2, guidance_scale=1.5, noise=0, speed=speed.SpeedOptions(attention="sage")).image
    assert spy.calls > calls
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-4)


def test_memo_clips_route_their_attention_through_the_options(monkeypatch, tmp_path, data_dir):
    from helpers.tiny_models import write_memo_models
    from parity.runner import DEFAULT_PARITY_ROOT

    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.media.audio import load_audio
    from portrait_animation.memo.pipeline import MemoSettings, condition, load_memo_bundle, talking_frames
    from portrait_animation.runtime import StandaloneRuntime

    write_memo_models(tmp_path, DEFAULT_PARITY_ROOT)
    bundle = load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), ModelStore.at(tmp_path), dtype="fp32",
                              emotion_model=False, identity=False)
    audio = load_audio(data_dir / "speech.wav")
    audio["waveform"] = audio["waveform"][..., : int(0.3 * audio["sample_rate"])]
    cond = condition(bundle, audio, fps=30, clip_length=4)
    ref, face = torch.rand(1, 96, 96, 3), torch.randn(1, 512)
    settings = MemoSettings(steps=2, num_past_frames=4, seed=3, width=64, height=64)
    spy = _spy_for_sage(monkeypatch)
    with torch.no_grad():
        exact = torch.cat(list(talking_frames(bundle, ref, cond, face, settings)))
        assert spy.calls == 0
        fast = torch.cat(list(talking_frames(bundle, ref, cond, face, settings,
                                             speed=speed.SpeedOptions(attention="sage"))))
    assert spy.calls > 0
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-4)


# ---- feature reuse across steps (HelloMeme) -----------------------------------------------------------------------
def test_a_reuse_call_on_unchanged_inputs_equals_the_full_call():
    """The shallow path (conv_in, down block 0's skips, last up block on the stored feature) is the full UNet's
    arithmetic when nothing changed since the feature was stored, with control, reference and motion in play."""
    from test_hellomeme_pipeline import control_shapes, tiny_models

    from portrait_animation.sk_attention.denoiser import DeepFeature

    models, shapes = tiny_models("v5")
    den, g = models.denoiser, torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 16, 16, generator=g)
    text = torch.randn(2, 5, 16, generator=g)  # the tiny UNet's text width
    control = {k: torch.randn(2, c, 3, h, w, generator=g) for k, (c, h, w) in shapes.items()}
    ref = models.reference_unet.reference_features(torch.randn(2, 4, 16, 16, generator=g), text)
    ref = {k: v for k, v in ref.items() if k.startswith("up_")}
    deep = DeepFeature()
    with torch.no_grad():
        full = den(x, 500, text, reference_cache=ref, control=control, use_motion=True, collect_cache=False,
                   deep=deep)[0]
        deep.reuse = True
        again = den(x, 500, text, reference_cache=ref, control=control, use_motion=True, collect_cache=False,
                    deep=deep)[0]
        other_x = den(x + torch.randn(x.shape, generator=g), 500, text, reference_cache=ref, control=control,
                      use_motion=True, collect_cache=False, deep=deep)[0]
    torch.testing.assert_close(again, full, rtol=0, atol=1e-5)
    assert not torch.allclose(other_x, full, atol=1e-3)  # the shallow blocks do see the new latents


def test_video_feature_reuse_skips_deep_blocks_but_never_the_reference_pass():
    from test_hellomeme_pipeline import computed_controls, reference_image, runtime, text, tiny_models

    from portrait_animation.sk_attention.pipeline_video import VideoGeneration

    models, _ = tiny_models("v5")
    calls = {"deep": 0, "reference": 0}
    models.denoiser.unet.mid_block.register_forward_hook(lambda *a: calls.__setitem__("deep", calls["deep"] + 1))
    models.reference_unet.unet.mid_block.register_forward_hook(
        lambda *a: calls.__setitem__("reference", calls["reference"] + 1))

    def video(options):
        calls.update(deep=0, reference=0)
        controls = computed_controls(models, 6, (128, 128))
        job = VideoGeneration(models, runtime(), reference_image((128, 128)), text(1), controls,
                              negative_prompt_embeds=text(2), steps=4, guidance_scale=2.0, noise=3, decode=False,
                              speed=options)
        latents = job.run()
        return latents, dict(calls), job.stats.unet_calls

    with torch.no_grad():
        exact, exact_calls, unet_calls = video(None)
        reuse, reuse_calls, _ = video(speed.SpeedOptions(cache_interval=2))
    assert exact_calls["deep"] == unet_calls and reuse_calls["deep"] == unet_calls // 2  # steps 0 and 2 of 4
    assert reuse_calls["reference"] == exact_calls["reference"] > 0
    assert torch.isfinite(reuse).all() and not torch.equal(reuse, exact)
    assert (reuse - exact).abs().mean() < (exact.abs().mean() * 0.5)  # an approximation, not another video
    with pytest.raises(ValueError, match="cache_interval"):
        speed.SpeedOptions(cache_interval=0)


def test_samplers_without_feature_reuse_say_cache_interval_is_ignored(caplog):
    options = speed.SpeedOptions(cache_interval=2)
    with caplog.at_level("WARNING", logger="portrait_animation.runtime.speed"):
        assert speed.reuse_interval(options, "HunyuanPortrait", supported=False) == 1
        assert speed.reuse_interval(options, "HelloMeme") == 2
    assert [r.getMessage() for r in caplog.records] == [
        "Speed Options: cache_interval=2 is not supported for HunyuanPortrait yet (HelloMeme and MEMO only); ignored"]
