"""HelloMeme v5 denoiser and pipelines beyond parity: window plan, skip-connection control, bounded video memory,
frame streaming, non-square sizes, cancellation, seeded noise, single-file SD1.5 checkpoints and LoRA merging.

Everything runs on tiny random models (SD1.5 topology, reduced widths) on the CPU.
"""
from __future__ import annotations

import gc
import json
import os
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.tiny_models import ldm_vae_name
from helpers.tiny_sd15 import UNET, VAE, tiny_unet, tiny_vae
from portrait_animation.runtime import Interrupted, StandaloneRuntime
from portrait_animation.sk_attention.adapters import MotionAdapter, ReferenceAdapter
from portrait_animation.sk_attention.base_models import (diffusers_to_ldm_unet_name, load_sd15, merge_lora)
from portrait_animation.sk_attention.denoiser import SKDenoiser
from portrait_animation.sk_attention.pipeline_image import (ComputedControls, HelloMemeModels, PrecomputedControls,
                                                            controls_from_drive_params, generate_image, load_models)
from portrait_animation.sk_attention.pipeline_video import VideoGeneration, plan_passes, split_windows
from portrait_animation.sk_attention.schedulers import RecordedNoise, SeededNoise, make_scheduler

UP_CHANNELS = (64, 64, 64, 32)  # input channels of the tiny UNet's up blocks
TEXT = 16


class PoolControlEncoder(nn.Module):
    """Stand-in control encoder: pools the pose image to each insertion point's size (cheap, per frame)."""

    def __init__(self, shapes: dict[str, tuple[int, int, int]]):
        super().__init__()
        self.shapes = shapes
        self.maps = nn.ModuleDict({k: nn.Conv2d(4, c, 1) for k, (c, _, _) in shapes.items()})
        self.calls: list[int] = []

    def forward(self, condition, emo_embedding=None, **_):
        b, _, f, hh, ww = condition.shape
        self.calls.append(f)
        x = condition.permute(0, 2, 1, 3, 4).reshape(b * f, 3, hh, ww)
        e = emo_embedding.reshape(b * f, -1).mean(1).view(b * f, 1, 1, 1).expand(-1, 1, hh, ww)
        x = torch.cat([x, e.to(x)], dim=1)
        out = {}
        for k, (c, h, w) in self.shapes.items():
            y = self.maps[k](F.adaptive_avg_pool2d(x, (h, w)))
            out[k] = y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        return out


class PassThrough(nn.Module):
    def forward(self, feats):
        return feats


def control_shapes(unet, latent_hw):
    """{down3_i / up3_i: (C, h, w)} of the tiny UNet at this latent size (from a reference pass)."""
    ref = SKDenoiser(unet)
    with torch.no_grad():
        cache = ref.reference_features(torch.zeros(1, 4, *latent_hw), torch.zeros(1, 3, TEXT))
    return {k.replace("down_", "down3_").replace("up_", "up3_"): tuple(v.shape[1:]) for k, v in cache.items()}


def tiny_models(version="v5", video=True, latent_hw=(16, 16)):
    unet = tiny_unet(0)
    reference = ReferenceAdapter(block_up_channels=UP_CHANNELS, variant="v5" if version == "v5" else "v5b")
    motion = MotionAdapter(block_down_channels=UNET["block_out_channels"], block_up_channels=UP_CHANNELS) \
        if video else None
    shapes = control_shapes(unet, latent_hw)
    return HelloMemeModels(version=version, denoiser=SKDenoiser(unet, reference, motion).eval(),
                           reference_unet=SKDenoiser(tiny_unet(1)).eval(), encode_vae=tiny_vae(2),
                           decode_vae=tiny_vae(3), control_encoder=PoolControlEncoder(shapes),
                           control_projector=PassThrough(), dtype=torch.float32), shapes


def computed_controls(models, num_frames, image_hw, requested=None):
    def condition(frames):
        if requested is not None:
            requested.append(list(frames))
        g = torch.Generator().manual_seed(sum(frames))
        return torch.rand(1, 3, len(frames), *image_hw, generator=g) * 2 - 1

    emo = torch.randn(1, num_frames, 548, generator=torch.Generator().manual_seed(5))
    return ComputedControls(models.control_encoder, models.control_projector, condition, emo_embedding=emo,
                            num_frames=num_frames, cache_bytes=0)


def reference_image(hw, seed=0):
    return torch.randint(0, 256, (*hw, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def text(seed):
    return torch.randn(1, 5, TEXT, generator=torch.Generator().manual_seed(seed))


def runtime():
    return StandaloneRuntime("cpu", show_progress=False)


# ---- window plan --------------------------------------------------------------------------------------------------
def test_window_plan_matches_the_recorded_keyframe_order():
    passes = plan_passes(14)
    assert [(p.depth, p.frames) for p in passes] == [(1, [0, 11, 13]), (0, list(range(14)))]
    assert passes[1].windows == [list(range(12)), [11, 12, 13]]
    assert split_windows(23) == [list(range(12)), list(range(11, 23))]  # 23 = 11*2 + 1: 1-frame tail dropped
    assert plan_passes(12)[0].windows == [list(range(12))] and len(plan_passes(12)) == 1


@pytest.mark.parametrize("n", [13, 24, 100, 300, 1000])
def test_window_plan_covers_every_frame_with_shared_boundaries(n):
    passes = plan_passes(n)
    assert passes[-1].depth == 0 and passes[-1].frames == list(range(n))
    for deeper, shallower in zip(passes, passes[1:]):
        ends = {shallower.frames[w[i]] for w in shallower.windows for i in (0, -1)}
        assert ends == set(deeper.frames)  # every window of a pass is anchored by keyframes of the deeper pass
    for p in passes:
        covered = sorted({i for w in p.windows for i in w})
        assert covered == list(range(len(p.frames)))
        assert all(len(w) <= 12 for w in p.windows)
        assert all(a[-1] == b[0] for a, b in zip(p.windows, p.windows[1:]))  # neighbours share one frame


# ---- denoiser -----------------------------------------------------------------------------------------------------
def test_control_enters_the_down_block_skip_but_motion_does_not():
    unet = tiny_unet(0)
    motion = MotionAdapter(block_down_channels=UNET["block_out_channels"], block_up_channels=UP_CHANNELS)
    den = SKDenoiser(unet, motion=motion).eval()
    shapes = control_shapes(unet, (16, 16))
    g = torch.Generator().manual_seed(0)
    control = {k: torch.randn(1, c, 2, h, w, generator=g) for k, (c, h, w) in shapes.items()}
    seen = {}
    block = unet.up_blocks[0]  # takes the skips of down block 3 (no downsampler: its last skip is its output)
    original = block.forward

    def spy(hidden_states, res_hidden_states_tuple, *a, **kw):
        seen["skip"] = res_hidden_states_tuple[-1].clone()
        return original(hidden_states, res_hidden_states_tuple, *a, **kw)

    block.forward = spy
    with torch.no_grad():
        _, cache = den(torch.randn(1, 4, 2, 16, 16, generator=g), 500, text(1), control=control, use_motion=True)
    skip_with_control = cache["down_3"] + control["down3_3"].permute(0, 2, 1, 3, 4).reshape(2, 64, 2, 2)
    torch.testing.assert_close(seen["skip"], skip_with_control)


def test_adapters_stay_beside_the_unet():
    unet = tiny_unet(0)
    keys = set(unet.state_dict())
    den = SKDenoiser(unet, ReferenceAdapter(block_up_channels=UP_CHANNELS))
    assert set(den.unet.state_dict()) == keys  # the UNet is still loadable from any SD1.5 checkpoint
    assert {k.split(".")[0] for k in den.state_dict()} == {"unet", "reference"}


# ---- video memory and streaming -------------------------------------------------------------------------------------
class LiveCPUBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of CPU tensor storages created inside the mode and still alive (views share their storage)."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, list] = {}  # storage ptr -> [tensor refcount, nbytes]
        self.live = 0
        self.peak = 0

    def _release(self, key):
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_meta:
                st = t.untyped_storage()
                key = st.data_ptr()
                if not key:
                    continue
                entry = self.refs.get(key)
                if entry is None:
                    entry = self.refs[key] = [0, st.nbytes()]
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                entry[0] += 1
                weakref.finalize(t, self._release, key)
        return out


def _video_peak(models, num_frames, hw=(128, 128)):
    """Peak live CPU tensor bytes of the denoising of a clip (decoding is checked by the streaming test)."""
    rt = runtime()
    controls = computed_controls(models, num_frames, hw)
    job = VideoGeneration(models, rt, reference_image(hw), text(1), controls, negative_prompt_embeds=text(2),
                          steps=1, guidance_scale=1.5, noise=SeededNoise(0), pad_cache_bytes=2 << 20, decode=False)
    with torch.no_grad(), LiveCPUBytes() as meter:
        job.run()
    return meter.peak, job


def test_video_memory_does_not_grow_with_frame_count():
    models, shapes = tiny_models("v5")
    peak24, job24 = _video_peak(models, 24)
    peak96, job96 = _video_peak(models, 96)
    latent_frame = 4 * 16 * 16 * 4  # bytes of one latent frame (B=1, fp32)
    control_frame = sum(c * h * w * 4 for c, h, w in shapes.values())
    growth = peak96 - peak24
    # Only latent-sized per-frame state may grow (latents, scheduler history, prediction sums for [uncond, cond],
    # base noise, keyframe latents): under 12 latent frames per extra frame. Holding the control features of every
    # frame would exceed this bound.
    assert growth <= 72 * 12 * latent_frame, (peak24, peak96)
    assert control_frame > 12 * latent_frame  # the bound can tell
    assert job96.stats.pad_cache_peak_bytes <= 2 << 20
    assert job96.stats.unet_calls == 9 + 1 and job24.stats.unet_calls == 3 + 1
    assert job96.latents.shape == (1, 4, 96, 16, 16)


def test_video_frames_are_decoded_lazily_and_not_held():
    models, _ = tiny_models("v5")
    decodes = []
    dec = models.decode_vae
    original = dec.decode
    dec.decode = lambda z, *a, **kw: (decodes.append(z.shape[0]), original(z, *a, **kw))[1]
    requested = []
    controls = computed_controls(models, 6, (128, 128), requested)
    job = VideoGeneration(models, runtime(), reference_image((128, 128)), text(1), controls,
                          negative_prompt_embeds=text(2), steps=1, guidance_scale=1.5, noise=3, decode_batch=1)
    refs = []
    with torch.no_grad():
        for index, image in job:
            assert len(decodes) == index + 1  # decoded one by one, handed out at once
            refs.append(weakref.ref(image))
            del image
            gc.collect()
            assert all(r() is None for r in refs)  # the pipeline keeps no decoded frame
    assert len(refs) == 6 and all(len(r) <= 12 for r in requested)  # controls computed per window
    dec.decode = original
    latents = job.latents
    batched = VideoGeneration(models, runtime(), reference_image((128, 128)), text(1),
                              computed_controls(models, 6, (128, 128)), negative_prompt_embeds=text(2), steps=1,
                              guidance_scale=1.5, noise=3, decode_batch=4)
    with torch.no_grad():
        frames = list(batched)
    assert [i for i, _ in frames] == list(range(6))
    torch.testing.assert_close(batched.latents, latents)
    with torch.no_grad():
        single = decode_latents_for_test(models, latents[:, :, 5])
    torch.testing.assert_close(frames[5][1], single, atol=1e-5, rtol=1e-4)


def decode_latents_for_test(models, latents):
    from portrait_animation.sk_attention.pipeline_image import decode_latents

    return decode_latents(models.decode_vae, latents * models.scaling_factor, models.scaling_factor, "cpu",
                          torch.float32)


def test_video_run_is_reproducible_from_a_seed_and_recorded_draws():
    models, _ = tiny_models("v5b")
    draws = []

    class Recording(SeededNoise):
        def draw(self, shape, kind):
            t = super().draw(shape, kind)
            draws.append(t)
            return t

    def run(noise):
        controls = computed_controls(models, 14, (128, 128))
        return VideoGeneration(models, runtime(), reference_image((128, 128)), text(1), controls,
                               negative_prompt_embeds=text(2), steps=1, guidance_scale=2.0, noise=noise,
                               decode=False)

    with torch.no_grad():
        a = run(Recording(7)).run()
        b = run(RecordedNoise(list(draws))).run()
        c = run(SeededNoise(8)).run()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert len(draws) == 2 + 2  # posterior, base noise, one SDE draw per step of each of the 2 passes


# ---- image pipeline: sizes, cancellation ------------------------------------------------------------------------
def _image(models, hw, **kw):
    controls = computed_controls(models, 1, hw)
    return generate_image(models, runtime(), reference_image(hw), text(1), controls,
                          negative_prompt_embeds=text(2), steps=2, guidance_scale=1.5, noise=0, **kw)


def test_non_square_latent_runs_with_the_size_correct_option():
    hw = (136, 200)  # latent 17 x 25: non-square and not a multiple of the UNet's down factor
    models, _ = tiny_models("v5", video=False, latent_hw=(17, 25))
    with torch.no_grad():
        with pytest.raises(ValueError, match="square"):
            _image(models, hw)
        out = _image(models, hw, size_correct=True)
    assert out.image.shape == (1, 136, 200, 3) and out.latents.shape == (1, 4, 17, 25)
    assert torch.isfinite(out.image).all() and 0 <= out.image.min() and out.image.max() <= 1


def test_non_square_video_runs_with_the_size_correct_option():
    models, _ = tiny_models("v5", latent_hw=(16, 24))
    controls = computed_controls(models, 13, (128, 192))
    job = VideoGeneration(models, runtime(), reference_image((128, 192)), text(1), controls,
                          negative_prompt_embeds=text(2), steps=1, guidance_scale=1.5, noise=0, size_correct=True,
                          decode=False)
    with torch.no_grad():
        latents = job.run()
    assert latents.shape == (1, 4, 13, 16, 24) and torch.isfinite(latents).all()
    assert job.stats.passes == [(1, 3, 1), (0, 13, 2)]


def test_v5c_reference_control_changes_the_reference_cache():
    models, shapes = tiny_models("v5c", video=False)
    caches = []
    with torch.no_grad():
        for seed in (0, 1):
            ref = computed_controls(models, 1, (128, 128))
            ref.expression["emo_embedding"] = torch.randn(1, 1, 548, generator=torch.Generator().manual_seed(seed))
            _image(models, (128, 128), reference_controls=ref,
                   observer=lambda e, d: caches.append(d["cache"]) if e == "reference_cache" else None)
    assert not torch.allclose(caches[0]["up_3"][1], caches[1]["up_3"][1])
    torch.testing.assert_close(caches[0]["down_0"], caches[1]["down_0"])  # taken before the first control
    with pytest.raises(ValueError, match="reference_controls"):
        _image(models, (128, 128))


def test_cancellation_stops_between_unet_calls():
    models, _ = tiny_models("v5")
    rt = runtime()
    calls = []
    rt.callbacks.append(lambda value, total, preview: (calls.append(value), rt.interrupt() if value == 3 else None))
    controls = computed_controls(models, 30, (128, 128))
    job = VideoGeneration(models, rt, reference_image((128, 128)), text(1), controls,
                          negative_prompt_embeds=text(2), steps=3, guidance_scale=1.5, noise=0)
    with torch.no_grad(), pytest.raises(Interrupted):
        next(iter(job))
    assert calls == [1, 2, 3] and job.stats.unet_calls == 3
    assert next(models.denoiser.parameters()).device.type == "cpu"


def test_image_pipeline_reports_progress_per_step_and_cancels():
    models, _ = tiny_models("v5b", video=False)
    rt = runtime()
    rt.callbacks.append(lambda value, total, preview: rt.interrupt() if value == 2 else None)
    with torch.no_grad(), pytest.raises(Interrupted):
        generate_image(models, rt, reference_image((128, 128)), text(1), computed_controls(models, 1, (128, 128)),
                       negative_prompt_embeds=text(2), steps=5, guidance_scale=1.5, noise=0)


def test_precomputed_controls_need_a_negative_for_guidance():
    models, shapes = tiny_models("v5b", video=False)
    feats = {k: torch.zeros(1, c, 1, h, w) for k, (c, h, w) in shapes.items()}
    with torch.no_grad(), pytest.raises(ValueError, match="negative control"):
        generate_image(models, runtime(), reference_image((128, 128)), text(1), PrecomputedControls(feats),
                       negative_prompt_embeds=text(2), steps=1, guidance_scale=1.5, noise=0)
    with torch.no_grad():  # without guidance only the conditional branch runs
        out = generate_image(models, runtime(), reference_image((128, 128)), text(1), PrecomputedControls(feats),
                             steps=1, guidance_scale=1.0, noise=0)
    assert out.image.shape == (1, 128, 128, 3)


def test_drive_params_controls_and_their_cfg_negative():
    models, shapes = tiny_models("v5", video=False)
    g = torch.Generator().manual_seed(1)
    params = {"condition": torch.rand(1, 3, 4, 128, 128, generator=g) * 2 - 1,
              "pd_fpg": torch.randn(1, 4, 548, generator=g)}
    controls = controls_from_drive_params(models, params)
    with torch.no_grad():
        feats = controls.cfg_features([1, 3], torch.device("cpu"), torch.float32, guided=True)
        neg = models.control_encoder(torch.full((1, 3, 1, 128, 128), -1.0), emo_embedding=torch.zeros(1, 1, 548))
        cond = models.control_encoder(params["condition"][:, :, [1, 3]], emo_embedding=params["pd_fpg"][:, [1, 3]])
    for k, (c, h, w) in shapes.items():
        assert feats[k].shape == (2, c, 2, h, w)
        torch.testing.assert_close(feats[k][:1], neg[k].expand(-1, -1, 2, -1, -1))  # [uncond, cond]
        torch.testing.assert_close(feats[k][1:], cond[k])
    with pytest.raises(ValueError, match="expression"):
        controls_from_drive_params(models, {"condition": params["condition"]})


# ---- schedulers and noise -----------------------------------------------------------------------------------------
def test_scheduler_matches_the_recorded_configuration():
    shared = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    case = shared / "parity/hellomeme/pipeline_v5c_image/case.json"
    if not case.is_file():
        pytest.skip("parity cases not available")
    recorded = json.loads(case.read_text())["settings"]["scheduler_config"]
    cfg = dict(make_scheduler("dpmpp_sde").config)
    assert {k: cfg[k] for k in recorded if k in cfg} == {k: v for k, v in recorded.items() if k in cfg}
    euler = make_scheduler("euler")
    euler.set_timesteps(25)
    assert float(euler.timesteps[0]) == 999.0 and abs(float(euler.init_noise_sigma) - 14.6146) < 1e-3


def test_recorded_noise_checks_the_call_order():
    noise = RecordedNoise([torch.zeros(1, 4, 8, 8)])
    with pytest.raises(RuntimeError, match="call order"):
        noise.draw((1, 4, 2, 8, 8), "sde")


# ---- single-file checkpoints and LoRA -----------------------------------------------------------------------------
def test_single_file_sd15_checkpoint_loads_strictly(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from portrait_animation.sk_attention import base_models

    unet, vae = tiny_unet(4), tiny_vae(5)
    ldm = {"model.diffusion_model." + diffusers_to_ldm_unet_name(k, UNET): v.clone()
           for k, v in unet.state_dict().items()}
    for k, v in vae.state_dict().items():
        k2 = ldm_vae_name(k, len(VAE["block_out_channels"]))
        if ".attn_1." in k2 and k2.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            v = v[:, :, None, None]  # ldm stores the VAE attention as 1x1 convs
        ldm["first_stage_model." + k2] = v.clone()
    path = tmp_path / "tiny_sd15.safetensors"
    save_file(ldm, str(path))
    cfgs = {"sd15_unet": dict(UNET), "sd15_vae": dict(VAE)}
    monkeypatch.setattr(base_models, "embedded_config", lambda name: dict(cfgs[name]))
    parts = load_sd15(path, parts=("unet", "vae"))
    for ours, theirs in ((parts.unet, unet), (parts.vae, vae)):
        mine = ours.state_dict()
        assert set(mine) == set(theirs.state_dict())
        for k, v in theirs.state_dict().items():
            assert torch.equal(mine[k], v), k

    # read in the target dtype (cast as read): the same values as casting the fp32 model, the report keeps the file's
    half = load_sd15(path, parts=("unet", "vae"), dtype=torch.float16)
    assert half.report.dtypes == {"float32": len(ldm)}
    for ours, theirs in ((half.unet, unet), (half.vae, vae)):
        for k, v in ours.state_dict().items():
            assert v.dtype == torch.float16 and torch.equal(v, theirs.state_dict()[k].half()), k

    # a file with a missing tensor fails strictly, naming the key
    del ldm["model.diffusion_model.out.2.weight"]
    save_file(ldm, str(path))
    with pytest.raises(Exception, match="conv_out.weight"):
        load_sd15(path, parts=("unet",))


def test_lora_merges_kohya_ldm_and_peft_layouts():
    unet = tiny_unet(6)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    conv = "down_blocks.1.resnets.0.conv1"
    proj = "up_blocks.1.attentions.0.proj_in"
    r = 4
    down_q, up_q = torch.randn(r, 32, generator=g), torch.randn(32, r, generator=g)
    down_c, up_c = torch.randn(r, 32, 3, 3, generator=g), torch.randn(32, r, 1, 1, generator=g)
    down_p, up_p = torch.randn(r, 64, 1, 1, generator=g), torch.randn(64, r, 1, 1, generator=g)
    lora = {
        "lora_unet_" + q.replace(".", "_") + ".lora_down.weight": down_q,  # kohya, diffusers names
        "lora_unet_" + q.replace(".", "_") + ".lora_up.weight": up_q,
        "lora_unet_" + q.replace(".", "_") + ".alpha": torch.tensor(2.0),
        "lora_unet_" + diffusers_to_ldm_unet_name(conv, UNET).replace(".", "_") + ".lora_down.weight": down_c,
        "lora_unet_" + diffusers_to_ldm_unet_name(conv, UNET).replace(".", "_") + ".lora_up.weight": up_c,
        f"unet.{proj}.lora_A.weight": down_p,  # diffusers / PEFT
        f"unet.{proj}.lora_B.weight": up_p,
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(r, 8),  # no text encoder given
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, r),
    }
    report = merge_lora(unet, lora, scale=0.5)
    assert sorted(report.applied) == sorted([q, conv, proj])
    # the text-encoder entry is reported as not applied (no text encoder given), never dropped silently
    assert report.text_encoder_skipped == ["lora_te_text_model_encoder_layers_0_mlp_fc1"] and report.skipped == []
    assert any("NOT applied" in line and "lora_te_text_model_encoder_layers_0_mlp_fc1" in line
               for line in report.lines())
    after = unet.state_dict()
    torch.testing.assert_close(after[q + ".weight"], before[q + ".weight"] + 0.5 * (2.0 / r) * up_q @ down_q)
    delta_c = (up_c.flatten(1) @ down_c.flatten(1)).view(32, 32, 3, 3)
    delta_p = (up_p.flatten(1) @ down_p.flatten(1)).view(64, 64, 1, 1)
    torch.testing.assert_close(after[conv + ".weight"], before[conv + ".weight"] + 0.5 * delta_c)
    torch.testing.assert_close(after[proj + ".weight"], before[proj + ".weight"] + 0.5 * delta_p)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {q + ".weight", conv + ".weight", proj + ".weight"}
    with pytest.raises(ValueError, match="no LoRA entry matched"):
        merge_lora(unet, {"lora_unet_nothing_here.lora_down.weight": down_q,
                          "lora_unet_nothing_here.lora_up.weight": up_q})


def _save_folder(folder: Path, module: nn.Module, config: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    weights = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_load_models_from_released_layout_folders(tmp_path):
    from safetensors.torch import save_file

    ckpt, official = tmp_path / "checkpoint", tmp_path / "songkey/stable-diffusion-v1-5"
    for root, seed in ((ckpt, 10), (official, 20)):
        _save_folder(root / "unet", tiny_unet(seed), {"_class_name": "UNet2DConditionModel", **UNET})
        _save_folder(root / "vae", tiny_vae(seed + 1), {"_class_name": "AutoencoderKL", **VAE})
    ref_cfg = {"_class_name": "HM5bReferenceAdapter", "block_down_channels": list(UNET["block_out_channels"]),
               "block_up_channels": list(UP_CHANNELS), "num_attention_heads": 8, "use_3d": False}
    ref = _save_folder(tmp_path / "songkey/hm5c_reference", ReferenceAdapter(block_up_channels=UP_CHANNELS,
                                                                             variant="v5b"), ref_cfg)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora = tmp_path / "style.safetensors"
    save_file({f"lora_unet_{q.replace('.', '_')}.lora_down.weight": torch.ones(2, 32),
               f"lora_unet_{q.replace('.', '_')}.lora_up.weight": torch.ones(32, 2)}, str(lora))
    models = load_models("v5c", ckpt, official, ref, lora=lora, lora_scale=0.25)
    plain = tiny_unet(10).state_dict()[q + ".weight"]
    # as released: the UNet LoRA at 1.0 whatever lora_scale is (lora_scale is the text-encoder strength)
    torch.testing.assert_close(models.denoiser.unet.state_dict()[q + ".weight"], plain + 1.0 * 2)
    assert models.lora_report and "at 1" in models.lora_report[1]
    torch.testing.assert_close(models.reference_unet.unet.state_dict()[q + ".weight"],
                               tiny_unet(20).state_dict()[q + ".weight"])  # x1: official SD1.5, no LoRA
    assert models.denoiser.motion is None and models.denoiser.reference.config.variant == "v5b"
    x2 = load_models("v5c", ckpt, None, ref, lora=lora, stylize="x2")
    torch.testing.assert_close(x2.reference_unet.unet.state_dict()[q + ".weight"], plain + 2.0)
