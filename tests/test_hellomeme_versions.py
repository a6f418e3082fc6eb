"""HelloMeme v1-v4 pipelines beyond parity: the v1/v2 two-stage fixed windows (against a direct whole-clip
implementation of the released algorithm), the v3/v4 end-frame pre-pass and first-pad rule, the versions' samplers,
the v1/v2 PD-FGC negative and the image-only refusals.

The v1-v4 roles are played by the tiny v5-topology stand-ins of ``test_hellomeme_pipeline`` (the pipelines only
need the denoiser's call signature), on the CPU.
"""
from __future__ import annotations

import pytest
import torch

from helpers.tiny_sd15 import tiny_unet
from portrait_animation.sk_attention import pipeline_image, pipeline_video
from portrait_animation.sk_attention.adapters import ReferenceAdapter
from portrait_animation.sk_attention.denoiser import SKDenoiser
from portrait_animation.sk_attention.pipeline_image import (ComputedControls, HelloMemeModels, PrecomputedControls,
                                                            generate_image, reference_cache)
from portrait_animation.sk_attention.pipeline_video import VideoGeneration, plan_fixed_windows
from portrait_animation.sk_attention.schedulers import RecordedNoise, make_scheduler
from test_hellomeme_pipeline import UP_CHANNELS, reference_image, runtime, text, tiny_models

HW = (64, 64)  # image; latents 8x8


def as_version(version, video=True, latent_hw=(8, 8)):
    """Stand-in models for ``version``: the v5-topology denoiser plus a pre-pass UNet (reference adapter, no motion)."""
    models, shapes = tiny_models("v5", video=video, latent_hw=latent_hw)
    pre = SKDenoiser(tiny_unet(4), ReferenceAdapter(block_up_channels=UP_CHANNELS, variant="v5")).eval()
    out = HelloMemeModels(version=version, denoiser=models.denoiser, reference_unet=models.reference_unet,
                          encode_vae=models.encode_vae, decode_vae=models.decode_vae,
                          control_encoder=models.control_encoder, control_projector=models.control_projector,
                          pre_denoiser=pre, dtype=torch.float32)
    return out, shapes


def controls_for(models, frames, negative=None):
    g = torch.Generator().manual_seed(7)
    cond = torch.rand(1, 3, frames, *HW, generator=g) * 2 - 1
    emo = torch.randn(1, frames, 548, generator=g)
    return ComputedControls(models.control_encoder, models.control_projector, cond, emo_embedding=emo,
                            negative_emo_embedding=negative)


def draws(*shapes, seed=11):
    g = torch.Generator().manual_seed(seed)
    return RecordedNoise([torch.randn(s, generator=g) for s in shapes])


# ---- v1/v2 window plan ----------------------------------------------------------------------------------------------
def test_fixed_windows_match_the_recorded_case():
    plan = plan_fixed_windows(14, 12, 4)  # pipeline_v1_video: 14 frames padded to 20, windows at 0 and 8
    assert plan.padded == 20 and plan.frames == list(range(14)) + [13] * 6
    assert plan.windows == [list(range(12)), list(range(8, 20))]


@pytest.mark.parametrize("overlap", [0, 2, 4, 5, 9])
def test_fixed_windows_tile_the_padded_clip(overlap):
    for n in range(1, 60):
        plan = plan_fixed_windows(n, 12, overlap)
        o = plan.overlap
        assert 0 <= o <= 5 and (plan.padded - o) % (12 - o) == 0 and plan.padded > n
        assert sorted({i for w in plan.windows for i in w}) == list(range(plan.padded))
        assert all(len(w) <= 12 for w in plan.windows) and plan.windows[-1][-1] == plan.padded - 1
        assert all(b[0] - a[0] == 12 - o for a, b in zip(plan.windows, plan.windows[1:]))


# ---- v1/v2 two-stage video against the released algorithm written out over the whole clip ---------------------------
def _whole_clip_v1(models, frames, steps, gs, stage1_noise, stage2_noise, vae_noise):
    """The released HMVideoPipeline loop, whole clip in memory (controls computed up front as the original does)."""
    controls = controls_for(models, frames, negative=torch.full((1, 1, 548), 0.3))
    lat_ref = pipeline_image.encode_reference(models.encode_vae, reference_image(HW), RecordedNoise([vae_noise]),
                                              "cpu", torch.float32)
    txt = torch.cat([text(2), text(1)])
    cache = reference_cache(models.reference_unet, lat_ref, txt, True)
    neg = controls.negative("cpu", torch.float32)
    per_frame = [{k: torch.cat([neg[k], v]) for k, v in controls.features([f], "cpu", torch.float32).items()}
                 for f in range(frames)]
    pre = []
    latent = None
    for f in range(frames):
        sched = make_scheduler("euler")
        sched.set_timesteps(min(10, steps))
        ts = sched.timesteps
        latent = stage1_noise * sched.init_noise_sigma if f == 0 else sched.add_noise(latent, stage1_noise, ts[:1])
        for t in ts:
            eps = models.pre_denoiser(sched.scale_model_input(torch.cat([latent] * 2), t), t, txt,
                                      reference_cache=cache, control=per_frame[f], collect_cache=False)[0]
            u, c = eps.chunk(2)
            latent = sched.step(u + gs * (c - u), t, latent, return_dict=False)[0]
        pre.append(latent)
    pre = torch.cat(pre, dim=2)
    stride, overlap = 8, 4
    pad = stride - (frames - overlap) % stride
    idx = list(range(frames)) + [frames - 1] * pad
    n = len(idx)
    chunks = [idx[i:i + 12] for i in range(0, n - stride + 1, stride)]
    chunks[-1] = list(range(chunks[-1][0], n))
    chunks = [list(range(c[0], c[0] + len(c))) for c in chunks]  # positions
    pre = torch.cat([pre, pre[:, :, -2:-1].repeat_interleave(pad, 2)], dim=2)
    controls_padded = per_frame + [per_frame[-1]] * pad
    sched = make_scheduler("euler")
    sched.set_timesteps(steps)
    lat = sched.add_noise(pre, stage2_noise, sched.timesteps[:1])
    for t in sched.timesteps:
        acc = torch.zeros(2, *lat.shape[1:])
        cnt = torch.zeros(1, 1, n, 1, 1)
        x_all = sched.scale_model_input(torch.cat([lat, lat]), t)
        for ch in chunks:
            ctrl = {k: torch.cat([controls_padded[p][k] for p in ch], dim=2) for k in controls_padded[0]}
            eps = models.denoiser(x_all[:, :, ch], t, txt, reference_cache=cache, control=ctrl, use_motion=True,
                                  collect_cache=False)[0]
            acc[:, :, ch] += eps
            cnt[:, :, ch] += 1
        u, c = (acc / cnt).chunk(2)
        lat = sched.step(u + gs * (c - u), t, lat, return_dict=False)[0]
    return pre[:, :, :frames], lat


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_two_stage_video_equals_the_released_whole_clip_loop(version):
    torch.manual_seed(0)
    models, _ = as_version(version)
    frames, steps, gs = 14, 2, 1.5
    n = plan_fixed_windows(frames).padded
    g = torch.Generator().manual_seed(3)
    vae_noise, s1, s2 = (torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 1, 8, 8, generator=g),
                         torch.randn(1, 4, n, 8, 8, generator=g))
    with torch.no_grad():
        want_pre, want = _whole_clip_v1(models, frames, steps, gs, s1, s2, vae_noise)
    seen = {}
    job = VideoGeneration(models, runtime(), reference_image(HW), text(1),
                          controls_for(models, frames, negative=torch.full((1, 1, 548), 0.3)),
                          negative_prompt_embeds=text(2), steps=steps, guidance_scale=gs,
                          noise=RecordedNoise([vae_noise, s1, s2]), decode=False,
                          observer=lambda e, d: seen.update({e: d["latents"]}) if "latents" in d else None)
    with torch.no_grad():
        job.run()
    torch.testing.assert_close(seen["stage1"], want_pre, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seen["final_latents"], want, atol=1e-4, rtol=1e-4)
    assert job.latents.shape[2] == frames  # the padded tail is not handed out
    assert job.stats.unet_calls == frames * steps + steps * 2


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_video_memory_does_not_grow_with_frame_count(version):
    """As for v5: only latent-sized per-frame state (stage-1 results, the padded sequence, its noise, prediction
    sums) grows with the clip on the host; control features stay within their store."""
    from test_hellomeme_pipeline import LiveCPUBytes, computed_controls

    models, shapes = as_version(version, latent_hw=(16, 16))

    def peak(frames):
        job = VideoGeneration(models, runtime(), reference_image((128, 128)), text(1),
                              computed_controls(models, frames, (128, 128)), negative_prompt_embeds=text(2), steps=1,
                              guidance_scale=1.5, noise=0, pad_cache_bytes=2 << 20, decode=False)
        with torch.no_grad(), LiveCPUBytes() as meter:
            job.run()
        return meter.peak, job

    peak24, _ = peak(24)
    peak96, job96 = peak(96)
    latent_frame = 4 * 16 * 16 * 4
    control_frame = sum(c * h * w * 4 for c, h, w in shapes.values())
    assert peak96 - peak24 <= 72 * 12 * latent_frame, (peak24, peak96)
    assert control_frame > 12 * latent_frame  # holding every frame's controls would break the bound
    assert job96.latents.shape == (1, 4, 96, 16, 16)


def test_v1_negative_expression_is_the_encoders_code_of_a_blank_face():
    models, _ = as_version("v1")
    neg_code = torch.full((1, 1, 548), 0.3)
    with_code = controls_for(models, 2, negative=neg_code).negative("cpu", torch.float32)
    zeros = controls_for(models, 2).negative("cpu", torch.float32)
    assert any(not torch.equal(with_code[k], zeros[k]) for k in zeros)
    params = {"condition": torch.zeros(1, 3, 2, *HW), "pd_fpg": torch.zeros(1, 2, 548)}
    with pytest.raises(ValueError, match="neg_pd_fpg"):
        pipeline_image.controls_from_drive_params(models, params)
    controls = pipeline_image.controls_from_drive_params(models, {**params, "neg_pd_fpg": neg_code})
    assert torch.equal(controls.negative_emo_embedding, neg_code)


# ---- v3/v4: keyframes with the end-frame pre-pass -------------------------------------------------------------------
@pytest.mark.parametrize("frames", [5, 14])
def test_keyframe_versions_pre_generate_the_deepest_ends_and_keep_their_pads(frames):
    models, _ = as_version("v3")
    events, pre_calls, pads_seen = [], [], []
    original = models.pre_denoiser.forward

    def spy(x, *a, **kw):
        pre_calls.append(x.shape[2])
        return original(x, *a, **kw)

    models.pre_denoiser.forward = spy
    den_forward = models.denoiser.forward

    def den_spy(x, *a, motion_pads=None, **kw):
        pads_seen.append(motion_pads is not None)
        return den_forward(x, *a, motion_pads=motion_pads, **kw)

    models.denoiser.forward = den_spy
    schedulers = []
    real = pipeline_video.make_scheduler
    job = VideoGeneration(models, runtime(), reference_image(HW), text(1), controls_for(models, frames),
                          negative_prompt_embeds=text(2), steps=2, noise=5, decode=False,
                          observer=lambda e, d: events.append((e, d)))
    try:
        pipeline_video.make_scheduler = lambda kind, cfg=None: schedulers.append(kind) or real(kind, cfg)
        with torch.no_grad():
            job.run()
    finally:
        pipeline_video.make_scheduler = real
    assert set(schedulers) == {"euler"}
    ends = [d for e, d in events if e == "end_frames"]
    deepest = job.plan[0].frames
    assert len(ends) == 1 and ends[0]["frames"] == [deepest[0], deepest[-1]]
    assert pre_calls == [2, 2]  # the two end frames together, once per step, without motion
    assert all(pads_seen)  # every window of every pass is anchored (the pre-pass gives the deepest pass its pads)


def test_keep_first_pads():
    store = pipeline_video.PadStore(1 << 20)
    store.set_latent(3, torch.zeros(1, 4, 2, 2), keep_first=True)
    store.set_latent(3, torch.ones(1, 4, 2, 2), keep_first=True)
    assert torch.equal(store.latents[3], torch.zeros(1, 4, 2, 2))
    store.set_latent(3, torch.ones(1, 4, 2, 2))
    assert torch.equal(store.latents[3], torch.ones(1, 4, 2, 2))


# ---- samplers and refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,kind", [("v1", "euler"), ("v2", "euler"), ("v3", "dpmpp_sde"), ("v4", "dpmpp_sde")])
def test_image_pipeline_uses_the_versions_released_sampler(version, kind):
    models, shapes = as_version(version, video=False)
    g = torch.Generator().manual_seed(1)
    feats = {k: torch.randn(2, c, 1, h, w, generator=g) for k, (c, h, w) in shapes.items()}
    controls = PrecomputedControls.from_cfg_batch(feats)

    def run(scheduler=None):
        with torch.no_grad():
            return generate_image(models, runtime(), reference_image(HW), text(1), controls,
                                  negative_prompt_embeds=text(2), steps=2, noise=4, scheduler=scheduler).latents

    assert torch.equal(run(), run(kind))
    other = "dpmpp_sde" if kind == "euler" else "euler"
    assert not torch.allclose(run(), run(other))


def test_image_only_version_is_refused_for_video():
    models, _ = as_version("v5c", video=False)
    with pytest.raises(ValueError, match="image-only"):
        VideoGeneration(models, runtime(), reference_image(HW), text(1), controls_for(models, 3))


def test_video_versions_need_the_pre_pass_unet():
    models, _ = as_version("v2")
    models.pre_denoiser = None
    with pytest.raises(ValueError, match="pre-pass"):
        VideoGeneration(models, runtime(), reference_image(HW), text(1), controls_for(models, 3))


# ---- loader ---------------------------------------------------------------------------------------------------------
def test_every_version_asks_for_its_released_folders():
    from portrait_animation.loaders.manifest import load_manifest
    from portrait_animation.sk_attention.loading import IMAGE_VERSIONS, VIDEO_VERSIONS, version_files

    assert set(IMAGE_VERSIONS) == {"v1", "v2", "v3", "v4", "v5", "v5b", "v5c"}
    assert set(VIDEO_VERSIONS) == set(IMAGE_VERSIONS) - {"v5c"}
    repos = {  # PD-FGC expression (the released default): the v1/v2 ARKit nets hm_control / hm2_control are not asked
        ("v1", False): {"hm_reference", "hm_control2"},
        ("v1", True): {"hm_reference", "hm_control2", "hm_animatediff_frame12"},
        ("v2", True): {"hm2_reference", "hm2_control2", "hm2_animatediff_frame12"},
        ("v3", False): {"hm3_reference", "hm3_control_mix"},
        ("v3", True): {"hm3_reference", "hm3_control_mix", "hm3_motion", "hm3_animatediff"},
        ("v4", True): {"hm4_reference", "hm_control_base", "hm4_control_proj", "hm4_motion", "hm4_animatediff"},
        ("v5", True): {"hm5_reference", "hm5_control_base", "hm5_control_proj", "hm5_motion"},
        ("v5c", False): {"hm5c_reference", "hm5_control_base", "hm5c_control_proj"},
    }
    manifest = load_manifest("hellomeme")
    for (version, video), want in repos.items():
        files = manifest.select(ids=version_files(version, video))
        assert {f.repo_id.split("/", 1)[1] for f in files} == want, (version, video)
        assert {f.path for f in files} == {"config.json", "diffusion_pytorch_model.safetensors"}
        group = {f.id for f in manifest.select(groups=[f"{version}_video" if video else version])}
        assert {f.id for f in files} <= group  # the Model Files node's version group holds them
    with pytest.raises(ValueError, match="image-only"):
        version_files("v5c", True)


@pytest.fixture
def hellomeme_nodes(monkeypatch):
    """nodes/hellomeme.py imported against the stand-in comfy_api (tests/helpers/comfy_stub.py)."""
    import importlib

    from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api

    install_stub_comfy_api(monkeypatch)
    yield importlib.import_module("portrait_animation.nodes.hellomeme")
    forget_stub_nodes()


def test_loader_node_offers_every_version_and_refuses_image_only_video(hellomeme_nodes, monkeypatch):
    loader = hellomeme_nodes.HelloMemeLoader
    monkeypatch.setattr(hellomeme_nodes, "_files", lambda folder: [])
    version = {i["id"]: i for i in loader.define_schema()["inputs"]}["version"]
    assert set(version["options"]) == {"v1", "v2", "v3", "v4", "v5", "v5b", "v5c"} and version["default"] == "v5c"
    assert all(v in version["tooltip"] for v in version["options"])
    assert loader.validate_inputs(version="v1", mode="video") is True
    assert "image-only" in loader.validate_inputs(version="v5c", mode="video")
    assert "unknown" in loader.validate_inputs(version="v6", mode="image")
    models, _ = as_version("v5c", video=False)
    with pytest.raises(ValueError, match="image-only"):
        hellomeme_nodes.HelloMemeVideo.execute({"models": models, "video": False}, None, None, None, 1, 2, 1.5,
                                               "auto", 64, 64, False)
    assert hellomeme_nodes._scheduler("auto") is None and hellomeme_nodes._scheduler("euler") == "euler"


def test_load_models_builds_the_released_v1_video_pipeline(tmp_path):
    """load_models on the released v1 folder layout (the parity case's reduced files) reproduces the original's
    pipeline_v1_video latents: official SD1.5 in the reference UNet and unet_pre, AnimateDiff in the denoiser, both
    control nets."""
    from parity import runner

    root = runner.parity_root()
    case_dir = root / "hellomeme" / "pipeline_v1_video"
    if not (case_dir / "weights.json").is_file():
        pytest.skip("parity data not available")
    runner._materialize_module(root).materialize(case_dir / "weights.json", tmp_path)
    case = next(c for c in runner.discover(root) if c.id.endswith("pipeline_v1_video"))
    inp, want = case.inputs(), case.expected()
    song = tmp_path / "songkey"
    models = pipeline_image.load_models(
        "v1", tmp_path / "checkpoint", song / "stable-diffusion-v1-5", song / "hm_reference",
        animatediff=song / "hm_animatediff_frame12", control_encoder=song / "hm_control2",
        arkit_control_encoder=song / "hm_control", dtype=torch.float32)
    assert models.pre_denoiser is not None and models.pre_denoiser.unet is models.reference_unet.unet
    controls = pipeline_image.controls_from_drive_params(models, {
        "condition": inp["condition"].float(), "pd_fpg": inp["pd_fpg"], "neg_pd_fpg": inp["neg_pd_fpg"],
        "drive_coeff": inp["drive_coeff"], "face_parts": inp["face_parts"]})
    seen = {}
    s = case.settings
    job = VideoGeneration(models, runtime(), inp["ref_image"], inp["prompt_embeds"], controls,
                          negative_prompt_embeds=inp["negative_prompt_embeds"], steps=int(s["steps"]),
                          guidance_scale=float(s["guidance_scale"]), decode=False,
                          noise=RecordedNoise([inp[d["input"]] for d in case.spec["random_draws"] if "input" in d]),
                          observer=lambda e, d: seen.update({e: d["latents"]}) if e == "final_latents" else None)
    with torch.inference_mode():
        job.run()
    tol = case.spec["tolerance"]["per_output"]["latents"]
    torch.testing.assert_close(seen["final_latents"] / models.scaling_factor, want["latents"], atol=tol["atol"],
                               rtol=tol["rtol"])
