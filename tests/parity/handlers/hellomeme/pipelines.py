"""HelloMeme parity handlers: the v1-v4 image and video pipelines.

The case's checkpoints are loaded with the pack's loaders as a user's download would be: ``checkpoint/unet|vae`` (the
user's SD1.5: denoising UNet, decoding VAE), ``songkey/stable-diffusion-v1-5/unet|vae`` (official SD1.5: reference
UNet, the v1-v4 video pre-pass UNet ``unet_pre``, encoding VAE) and the ``songkey/<repo>`` folders (reference
adapter, control networks, motion adapters), recognised by their released class. Control features are case inputs
(``control.*`` batched [uncond, cond], or ``control.*`` + ``control_neg.*``) or, when the case gives the pose images
and expression instead, computed by the case's control networks. The recorded random draws are replayed in order.
"""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.runtime.standalone import StandaloneRuntime
from portrait_animation.sk_attention.adapters import load_animatediff_adapter, load_hellomeme_module
from portrait_animation.sk_attention.base_models import load_unet_folder, load_vae_folder
from portrait_animation.sk_attention.denoiser import build_denoiser
from portrait_animation.sk_attention.pipeline_image import (ComputedControls, HelloMemeModels, PrecomputedControls,
                                                            generate_image)
from portrait_animation.sk_attention.pipeline_video import VideoGeneration
from portrait_animation.sk_attention.schedulers import RecordedNoise

SD15 = "songkey/stable-diffusion-v1-5"
REFERENCE = ("HMReferenceAdapter", "HM3ReferenceAdapter", "HM5ReferenceAdapter", "HM5bReferenceAdapter")
MOTION = ("HM3MotionAdapter", "HM5MotionAdapter")
ANIMATEDIFF = ("MotionAdapter",)
ARKIT_NETS = ("HMControlNet", "HMV2ControlNet")  # v1/v2: the ARKit + face-parts net
CONTROL_NETS = ("HMControlNet2", "HMV2ControlNet2", "HMV3ControlNet", "HMControlNetBase", "HM5ControlNetBase")
PROJECTORS = ("HM4SD15ControlProj", "HM5SD15ControlProj")
IMAGE_CASES = tuple(f"hellomeme.pipeline_{v}_image" for v in ("v1", "v2", "v3", "v4"))
VIDEO_CASES = tuple(f"hellomeme.pipeline_{v}_video" for v in ("v1", "v2", "v3", "v4"))


def _group(inputs: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}


def _load(case: Case, ckpt_dir: Path, classes: tuple[str, ...], loader=load_hellomeme_module):
    for c in case.spec.get("checkpoints", []):
        if c.get("class") in classes:
            return loader(ckpt_dir / c["folder"])
    return None


def _models(case: Case, ckpt_dir: Path, video: bool) -> HelloMemeModels:
    version = case.spec["versions"][0]
    reference = _load(case, ckpt_dir, REFERENCE)
    official = load_unet_folder(ckpt_dir / SD15 / "unet")
    denoiser = build_denoiser(version, load_unet_folder(ckpt_dir / "checkpoint/unet"), reference=reference,
                              motion=_load(case, ckpt_dir, MOTION) if video else None,
                              animatediff=_load(case, ckpt_dir, ANIMATEDIFF, load_animatediff_adapter) if video else None)
    pre = build_denoiser(version, official, reference=reference).eval() if video else None
    return HelloMemeModels(
        version=version, denoiser=denoiser.eval(), reference_unet=build_denoiser(version, official).eval(),
        encode_vae=load_vae_folder(ckpt_dir / SD15 / "vae"), decode_vae=load_vae_folder(ckpt_dir / "checkpoint/vae"),
        control_encoder=_load(case, ckpt_dir, CONTROL_NETS), control_projector=_load(case, ckpt_dir, PROJECTORS),
        arkit_control_encoder=_load(case, ckpt_dir, ARKIT_NETS), pre_denoiser=pre, dtype=torch.float32)


def _controls(models: HelloMemeModels, inp: dict, prefix: str = ""):
    """The case's controls: given features, or computed from its pose images + expression."""
    feats = _group(inp, f"{prefix}control.")
    if feats:
        negative = _group(inp, f"{prefix}control_neg.")
        return PrecomputedControls(feats, negative) if negative else PrecomputedControls.from_cfg_batch(feats)
    name = (lambda k: f"{prefix}{k}")  # noqa: E731
    if name("condition") not in inp:
        return None
    emo = inp.get(name("pd_fpg"), inp.get(name("emo_embedding")))
    drive_coeff = inp.get(name("drive_coeff"))
    if drive_coeff is not None and models.arkit_control_encoder is None and models.version in ("v1", "v2"):
        drive_coeff = None  # the case has no ARKit net: PD-FGC only
    return ComputedControls(models.control_encoder, models.control_projector, inp[name("condition")].float(),
                            emo_embedding=emo, drive_coeff=drive_coeff,
                            face_parts=inp.get(name("face_parts")) if drive_coeff is not None else None,
                            arkit_encoder=models.arkit_control_encoder,
                            negative_emo_embedding=inp.get(name("neg_pd_fpg")) if models.version in ("v1", "v2")
                            else None)


def _draws(case: Case, inputs: dict) -> RecordedNoise:
    return RecordedNoise([inputs[d["input"]] for d in case.spec.get("random_draws", []) if "input" in d])


def _runtime() -> StandaloneRuntime:
    return StandaloneRuntime("cpu", show_progress=False)


@handler(*IMAGE_CASES)
def pipeline_image(case: Case, ckpt_dir: Path) -> dict:
    inp = case.inputs()
    s = case.settings
    models = _models(case, ckpt_dir, video=False)
    out: dict[str, torch.Tensor] = {}

    def observe(event: str, data: dict) -> None:
        if event == "reference_cache":
            out.update({f"ref_cache.{k}": v for k, v in data["cache"].items()})
        elif event == "step":
            out[f"trace.step{data['step']}.noise_pred_cfg"] = data["noise_pred"]
            out[f"trace.step{data['step']}.latents"] = data["latents"]

    result = generate_image(
        models, _runtime(), inp["ref_image"], inp["prompt_embeds"], controls=_controls(models, inp),
        negative_prompt_embeds=inp.get("negative_prompt_embeds"), steps=int(s["steps"]),
        guidance_scale=float(s["guidance_scale"]), noise=_draws(case, inp), scheduler_config=s.get("scheduler_config"),
        observer=observe)
    out["latents"] = result.latents
    out["image"] = result.image[0]
    return out


@handler(*VIDEO_CASES)
def pipeline_video(case: Case, ckpt_dir: Path) -> dict:
    inp = case.inputs()
    s = case.settings
    models = _models(case, ckpt_dir, video=True)
    frames = int(s["frames"])
    out: dict[str, torch.Tensor] = {}
    calls: list[int] = []
    sf = models.scaling_factor
    two_stage = models.spec.video == "windows"

    def observe(event: str, data: dict) -> None:
        if event == "stage1":
            out["trace.stage1_latents"] = data["latents"]
        elif event == "final_latents":
            out["latents"] = data["latents"] / sf  # v1/v2: the padded sequence, as the original returns it
        elif event == "step" and two_stage:
            out[f"trace.stage2.step{data['step']}.noise_pred_cfg"] = data["noise_pred"]
            out[f"trace.stage2.step{data['step']}.latents"] = data["latents"]
        elif event == "step":
            k = len(calls)
            calls.append(data["latents"].shape[2])
            out[f"trace.call{k}.noise_pred_cfg"] = data["noise_pred"]
            out[f"trace.call{k}.latents"] = data["latents"]

    job = VideoGeneration(
        models, _runtime(), inp["ref_image"], inp["prompt_embeds"], _controls(models, inp),
        negative_prompt_embeds=inp.get("negative_prompt_embeds"), num_frames=frames, steps=int(s["steps"]),
        guidance_scale=float(s["guidance_scale"]), noise=_draws(case, inp), window=int(s.get("window", 12)),
        stride=int(s.get("stride", 11)), overlap=int(s.get("overlap", 4)),
        scheduler_config=s.get("scheduler_config"), observer=observe)
    images = {}
    for index, image in job:
        if index in (0, frames - 1):
            images[index] = image[0]
    expected_calls = [c["frames"] for c in s.get("scheduler_calls", [])]
    if expected_calls and calls != expected_calls:
        raise AssertionError(f"scheduler call order {calls} != recorded {expected_calls}")
    if not two_stage:
        out["latents"] = job.latents
    out["frame_first"] = images[0]
    out["frame_last"] = images[frames - 1]
    return out
