"""HelloMeme v5 / v5c end to end on the CPU, through the pack's real path, with stand-in models.

A tiny model set in the manifest layout (``tests/helpers/tiny_models.py``: parity-case UNet / VAE / adapters, random
reduced control networks, a random real-size PD-FGC encoder) is loaded from a ComfyUI-like models folder by the
pack's loaders (model store -> ``load_hellomeme`` / ``load_pdfgc_encoder``). Driving conditions come from real media:
``harris.jpg`` (reference) and the first frames of ``jue.mp4`` (driving), with the MediaPipe head-pose approximation
(the official ONNX toolkit is not available here) and the PD-FGC encoder. Then ``generate_image`` (v5c, v5) and
``generate_video`` (v5, 14 frames: the keyframe windows recurse once), with a progress callback and cancellation
through :class:`StandaloneRuntime`. Random weights: the checks are shapes, ranges, order, determinism and control
flow, not image quality.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from portrait_animation.runtime import Interrupted, StandaloneRuntime

pytestmark = pytest.mark.slow

VIDEO_FRAMES = 14  # > 12: windows [0..11], [11..13] and a keyframe pass over {0, 11, 13}
STEPS = 2
GUIDANCE = 1.5
SEED = 7


# ---- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stand_ins(hellomeme_stand_ins):
    return hellomeme_stand_ins  # (models_dir, info): tests/conftest.py


@pytest.fixture(scope="module")
def store(stand_ins):
    from portrait_animation.loaders.store import ModelStore

    return ModelStore.at(stand_ins[0])


@pytest.fixture(scope="module")
def conditions(data_dir, store):
    """Conditions of harris.jpg driven by the first 14 frames of jue.mp4 (MediaPipe head pose, PD-FGC)."""
    import cv2

    from portrait_animation.media.video import iter_video_frames
    from portrait_animation.motion.hellomeme.conditions import hellomeme_conditions
    from portrait_animation.sk_attention.loading import load_pdfgc_encoder

    reference = cv2.cvtColor(cv2.imread(str(data_dir / "harris.jpg")), cv2.COLOR_BGR2RGB)
    driving = np.stack(list(iter_video_frames(data_dir / "jue.mp4", max_frames=VIDEO_FRAMES)))
    encoder = load_pdfgc_encoder(store)  # the stand-in pd_fgc_motion folder through the store, strict load
    with torch.no_grad():
        return hellomeme_conditions(reference, driving, head_pose="approximate", pdfgc_encoder=encoder,
                                    on_missing="fill_nearest")


@pytest.fixture(scope="module")
def prompts(stand_ins):
    dim = stand_ins[1]["text_dim"]  # cross_attention_dim of the stand-in UNet
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 8, dim, generator=g), torch.randn(1, 8, dim, generator=g)


def _load(store, version, video=False):
    from portrait_animation.sk_attention.loading import load_hellomeme

    return load_hellomeme(version, video=video, store=store, dtype=torch.float32)


def _resize_image(img: torch.Tensor, hw) -> torch.Tensor:
    """IMAGE (B, H, W, 3) -> (B, h, w, 3), as the sampler nodes do."""
    return F.interpolate(img.permute(0, 3, 1, 2), size=tuple(hw), mode="bilinear", antialias=True,
                         align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)


def _resize_params(params: dict, hw) -> dict:
    """Pose images (B, 3, F, 512, 512) follow the output size (as the sampler nodes do)."""
    params = dict(params)
    c = params["condition"]
    b, ch, f = c.shape[:3]
    flat = F.interpolate(c.permute(0, 2, 1, 3, 4).reshape(b * f, ch, *c.shape[-2:]), size=tuple(hw),
                         mode="bilinear", antialias=True, align_corners=False)
    params["condition"] = flat.reshape(b, f, ch, *hw).permute(0, 2, 1, 3, 4)
    return params


def _runtime(**kw) -> StandaloneRuntime:
    return StandaloneRuntime("cpu", show_progress=False, **kw)


# ---- the stand-ins ---------------------------------------------------------------------------------------------------
def test_stand_ins_follow_the_manifest_and_load_strictly(stand_ins, store):
    """Every file of groups v5 / v5_video / v5c / base_diffusers (without the optional text encoder) /
    expression_pdfgc is where the manifest says, passes the store's checks, and the control networks come back at
    the reduced widths that fit the stand-in UNet."""
    from portrait_animation.loaders.manifest import load_manifest
    from portrait_animation.sk_attention.adapters import load_hellomeme_module
    from portrait_animation.sk_attention.control import ControlEncoder, ControlProjector

    models_dir, info = stand_ins
    manifest = load_manifest("hellomeme")
    files = [f for f in manifest.select(groups=["v5_video", "v5c", "base_diffusers", "expression_pdfgc"])
             if "text_encoder" not in f.id]
    found = store.ensure(files)
    assert all(Path(p).is_relative_to(models_dir / "portrait_animation" / "hellomeme") for p in found.values())
    assert not (info["hellomeme"] / "hm5b_reference").exists()

    enc = load_hellomeme_module(info["hellomeme"] / "hm5_control_base")
    proj = load_hellomeme_module(info["hellomeme"] / "hm5c_control_proj")
    assert isinstance(enc, ControlEncoder) and isinstance(proj, ControlProjector)
    c = info["unet_channels"]
    assert enc.config.mid_channels == tuple(c[:3]) and enc.config.out_channels == c[0]
    assert enc.config.cross_attention_dim == info["control_context_dim"]
    size = info["image_size"]
    with torch.no_grad():
        feats = proj(enc(torch.zeros(1, 3, 2, size, size), emo_embedding=torch.zeros(1, 2, 548)))
    up_in = [c[-1]] + list(c[::-1][:3])
    for i in range(4):
        assert feats[f"down3_{i}"].shape[:3] == (1, c[i], 2)
        assert feats[f"up3_{i}"].shape[:3] == (1, up_in[i], 2)
    assert feats["up3_3"].shape[-2:] == (size // 8, size // 8)


def test_conditions_from_real_media(conditions):
    c = conditions
    assert c.head_pose == "approximate" and c.expression == "pdfgc"
    assert c.condition.shape == (1, 3, VIDEO_FRAMES, 512, 512)
    assert c.pd_fpg.shape == (1, VIDEO_FRAMES, 548) and torch.isfinite(c.pd_fpg).all()
    assert c.ref_params["condition"].shape == (1, 3, 1, 512, 512) and c.ref_params["pd_fpg"].shape == (1, 1, 548)
    assert c.condition.min() >= -1 and c.condition.max() <= 1
    assert c.reference_image.shape == (1, 512, 512, 3)
    assert not c.filled_frames  # MediaPipe finds the face in every driving frame
    assert c.angles.shape == (VIDEO_FRAMES, 3) and c.angles.std(0).max() > 0  # the head moves


# ---- images ----------------------------------------------------------------------------------------------------------
def test_v5c_image_end_to_end_is_deterministic(stand_ins, store, conditions, prompts):
    from portrait_animation.sk_attention.pipeline_image import controls_from_drive_params, generate_image

    size = stand_ins[1]["image_size"]
    models = _load(store, "v5c")
    assert models.version == "v5c" and models.denoiser.motion is None
    hw = (size, size)
    reference = _resize_image(conditions.reference_image, hw)
    positive, negative = prompts

    def run(seed, frame=3):
        controls = controls_from_drive_params(models, _resize_params(conditions.drive_params(), hw))
        ref_controls = controls_from_drive_params(models, _resize_params(conditions.ref_params, hw))
        rt = _runtime()
        values = []
        rt.callbacks.append(lambda value, total, preview: values.append((value, total)))
        with torch.no_grad():
            out = generate_image(models, rt, reference, positive, controls, negative_prompt_embeds=negative,
                                 reference_controls=ref_controls, steps=STEPS, guidance_scale=GUIDANCE, noise=seed,
                                 frame=frame)
        assert [v for v, _ in values] == list(range(1, STEPS + 1)) and {t for _, t in values} == {STEPS}
        return out

    a, b, c = run(SEED), run(SEED), run(SEED + 1)
    assert a.image.shape == (1, size, size, 3) and a.image.dtype == torch.float32
    assert a.latents.shape == (1, 4, size // 8, size // 8)
    assert torch.isfinite(a.latents).all() and a.image.min() >= 0 and a.image.max() <= 1
    assert a.image.std() > 0  # not a constant image
    assert torch.equal(a.image, b.image) and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    d = run(SEED, frame=10)  # another driving frame changes the result
    assert not torch.equal(a.latents, d.latents)


def test_v5_image_end_to_end_square_and_size_correct(stand_ins, store, conditions, prompts):
    from portrait_animation.sk_attention.pipeline_image import controls_from_drive_params, generate_image

    size = stand_ins[1]["image_size"]
    models = _load(store, "v5")
    positive, negative = prompts

    def run(hw, size_correct=False):
        controls = controls_from_drive_params(models, _resize_params(conditions.drive_params(), hw))
        with torch.no_grad():
            return generate_image(models, _runtime(), _resize_image(conditions.reference_image, hw), positive,
                                  controls, negative_prompt_embeds=negative, steps=STEPS, guidance_scale=GUIDANCE,
                                  noise=SEED, frame=1, size_correct=size_correct)

    square = run((size, size))
    assert square.image.shape == (1, size, size, 3) and torch.isfinite(square.latents).all()
    assert square.image.min() >= 0 and square.image.max() <= 1
    # the size-correct option gives the same result on square maps
    torch.testing.assert_close(run((size, size), size_correct=True).latents, square.latents)
    # non-square (sides must stay multiples of 64 for the control network): released v5 refuses, size_correct works
    wide = (size, size + 64)
    with pytest.raises(ValueError, match="square"):
        run(wide)
    out = run(wide, size_correct=True)
    assert out.image.shape == (1, *wide, 3) and out.latents.shape == (1, 4, wide[0] // 8, wide[1] // 8)
    assert torch.isfinite(out.latents).all()


# ---- video -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video_models(store):
    return _load(store, "v5", video=True)


def _video(models, conditions, prompts, size, rt, on_frame, seed=SEED, cache_bytes=0):
    from portrait_animation.sk_attention.pipeline_image import controls_from_drive_params
    from portrait_animation.sk_attention.pipeline_video import generate_video

    hw = (size, size)
    controls = controls_from_drive_params(models, _resize_params(conditions.drive_params(), hw),
                                          cache_bytes=cache_bytes)
    positive, negative = prompts
    with torch.no_grad():
        return generate_video(models, rt, _resize_image(conditions.reference_image, hw), positive, controls,
                              on_frame=on_frame, negative_prompt_embeds=negative, steps=STEPS,
                              guidance_scale=GUIDANCE, noise=seed)


def test_v5_video_streams_frames_in_order_and_is_deterministic(stand_ins, video_models, conditions, prompts):
    from portrait_animation.sk_attention.pipeline_video import count_unet_calls

    size = stand_ins[1]["image_size"]
    frames: list[tuple[int, torch.Tensor]] = []
    rt = _runtime()
    progress = []
    rt.callbacks.append(lambda value, total, preview: progress.append((value, total)))
    job = _video(video_models, conditions, prompts, size, rt, lambda i, img: frames.append((i, img)))

    calls = count_unet_calls(VIDEO_FRAMES, STEPS)
    assert calls == STEPS * 3  # keyframe pass (1 window) + full pass (2 windows)
    assert job.stats.passes == [(1, 3, 1), (0, VIDEO_FRAMES, 2)]
    assert job.stats.unet_calls == calls and job.stats.pad_computations > 0
    assert [v for v, _ in progress] == list(range(1, calls + 1)) and {t for _, t in progress} == {calls}
    assert [i for i, _ in frames] == list(range(VIDEO_FRAMES))
    for _, img in frames:
        assert img.shape == (1, size, size, 3) and img.min() >= 0 and img.max() <= 1
    assert job.latents.shape == (1, 4, VIDEO_FRAMES, size // 8, size // 8) and torch.isfinite(job.latents).all()
    assert torch.stack([img for _, img in frames]).std(0).mean() > 0  # frames differ

    # same seed -> bit-identical video
    again: list[torch.Tensor] = []
    job2 = _video(video_models, conditions, prompts, size, _runtime(), lambda i, img: again.append(img))
    assert torch.equal(job2.latents, job.latents)
    assert all(torch.equal(a, b) for (_, a), b in zip(frames, again))
    # control features are computed one frame per call whether stored or not: the store changes nothing
    cached = _video(video_models, conditions, prompts, size, _runtime(), None, cache_bytes=1 << 26)
    assert torch.equal(cached.latents, job.latents)
    assert cached.stats.control_cache_peak_bytes > 0
    # another seed -> another video
    assert not torch.equal(_video(video_models, conditions, prompts, size, _runtime(), None, seed=SEED + 1).latents,
                           job.latents)


def test_v5_video_cancellation_through_the_runtime(stand_ins, video_models, conditions, prompts):
    size = stand_ins[1]["image_size"]
    rt = _runtime()
    frames = []
    rt.callbacks.append(lambda value, total, preview: rt.interrupt() if value == 2 else None)
    with pytest.raises(Interrupted):
        _video(video_models, conditions, prompts, size, rt, lambda i, img: frames.append(i))
    assert frames == []  # cancelled while denoising: nothing was handed out

    # the runtime is usable again; cancel while frames stream out (between decoded frames)
    rt.callbacks.clear()
    streamed = []

    def on_frame(i, img):
        streamed.append(i)
        if i == 4:
            rt.interrupt()

    with pytest.raises(Interrupted):
        _video(video_models, conditions, prompts, size, rt, on_frame)
    assert streamed == list(range(5))


def test_official_base_as_checkpoint_is_loaded_once_and_gives_the_same_result(stand_ins, store, conditions, prompts,
                                                                               tmp_path):
    """With the official SD1.5 as the denoising checkpoint (x1), the reference UNet and the encoding VAE reuse the
    denoiser's weights (held and managed once); a copy of the same files at another path loads them separately —
    both must generate exactly the same image."""
    import shutil

    from portrait_animation.sk_attention.loading import load_hellomeme, official_sd15
    from portrait_animation.sk_attention.pipeline_image import controls_from_drive_params, generate_image

    shared = _load(store, "v5c")
    assert shared.reference_unet.unet is shared.denoiser.unet and shared.encode_vae is shared.decode_vae
    rt = _runtime()
    handles = shared.handles(rt)
    assert handles["reference_unet"].extra is handles["denoiser"].extra
    assert handles["reference_unet"].module is shared.reference_unet  # its own wrapper (no adapters)

    copy = tmp_path / "sd15-copy"
    shutil.copytree(official_sd15(store, download=False), copy)
    separate = load_hellomeme("v5c", checkpoint=copy, store=store, dtype=torch.float32)
    assert separate.reference_unet.unet is not separate.denoiser.unet

    size = stand_ins[1]["image_size"]
    hw = (size, size)
    reference = _resize_image(conditions.reference_image, hw)
    positive, negative = prompts
    outs = []
    for models in (shared, separate):
        controls = controls_from_drive_params(models, _resize_params(conditions.drive_params(), hw))
        ref_controls = controls_from_drive_params(models, _resize_params(conditions.ref_params, hw))
        with torch.no_grad():
            outs.append(generate_image(models, _runtime(), reference, positive, controls,
                                       negative_prompt_embeds=negative, reference_controls=ref_controls,
                                       steps=STEPS, guidance_scale=GUIDANCE, noise=SEED, frame=3).latents)
    assert torch.equal(outs[0], outs[1])
