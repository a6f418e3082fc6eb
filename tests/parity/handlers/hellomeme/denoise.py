"""HelloMeme parity handlers: the v5 / v5b / v5c SK denoiser and the image / video pipelines.

Checkpoints are loaded from the case's materialised folders with the pack's loaders, as a user's download would be:
``checkpoint/unet`` and ``checkpoint/vae`` (the user's SD1.5 checkpoint: denoising UNet, decoding VAE),
``songkey/stable-diffusion-v1-5/unet|vae`` (official SD1.5: reference UNet, encoding VAE) and ``songkey/<repo>``
HelloMeme folders (reference / motion adapters). Control features are case inputs (the released control networks
do not fit the reduced UNet); the recorded random draws are replayed in order (faithful-parity noise mode).
"""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.runtime.standalone import StandaloneRuntime
from portrait_animation.sk_attention.adapters import load_hellomeme_module
from portrait_animation.sk_attention.base_models import load_unet_folder, load_vae_folder
from portrait_animation.sk_attention.denoiser import SKDenoiser, build_denoiser
from portrait_animation.sk_attention.pipeline_image import HelloMemeModels, PrecomputedControls, generate_image
from portrait_animation.sk_attention.pipeline_video import VideoGeneration
from portrait_animation.sk_attention.schedulers import RecordedNoise

REFERENCE_CLASSES = ("HMReferenceAdapter", "HM3ReferenceAdapter", "HM5ReferenceAdapter", "HM5bReferenceAdapter")
MOTION_CLASSES = ("HM3MotionAdapter", "HM5MotionAdapter")
ANIMATEDIFF_CLASSES = ("MotionAdapter",)  # diffusers AnimateDiff adapter of v1-v4 video (inside the UNet's blocks)
# v1/v2 control networks are configurable, so their cases run them (on the case's pose and expression inputs)
CONTROL_CLASSES = ("HMControlNet", "HMControlNet2", "HMV2ControlNet", "HMV2ControlNet2")
SD15 = "songkey/stable-diffusion-v1-5"


def _group(inputs: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}


def _folder_of(case: Case, ckpt_dir: Path, classes: tuple[str, ...]) -> Path | None:
    for c in case.spec.get("checkpoints", []):
        if c.get("class") in classes:
            return ckpt_dir / c["folder"]
    return None


def _denoiser(case: Case, ckpt_dir: Path) -> tuple[SKDenoiser, SKDenoiser]:
    """(denoiser with its adapters, reference UNet) as the case's checkpoints and version describe them."""
    version = case.spec["versions"][0]
    ref_folder = _folder_of(case, ckpt_dir, REFERENCE_CLASSES)
    motion_folder = _folder_of(case, ckpt_dir, MOTION_CLASSES)
    animatediff_folder = _folder_of(case, ckpt_dir, ANIMATEDIFF_CLASSES)
    animatediff = None
    if animatediff_folder:
        from portrait_animation.sk_attention.adapters import load_animatediff_adapter

        animatediff = load_animatediff_adapter(animatediff_folder)
    denoiser = build_denoiser(version, load_unet_folder(ckpt_dir / "checkpoint/unet"),
                              reference=load_hellomeme_module(ref_folder) if ref_folder else None,
                              motion=load_hellomeme_module(motion_folder) if motion_folder else None,
                              animatediff=animatediff).eval()
    reference = build_denoiser(version, load_unet_folder(ckpt_dir / SD15 / "unet")).eval()
    return denoiser, reference


def _draws(case: Case, inputs: dict) -> RecordedNoise:
    names = [d["input"] for d in case.spec.get("random_draws", []) if "input" in d]
    return RecordedNoise([inputs[n] for n in names])


def _runtime() -> StandaloneRuntime:
    return StandaloneRuntime("cpu", show_progress=False)


def _run_controls(case: Case, ckpt_dir: Path, inp: dict) -> dict[str, torch.Tensor]:
    """The union of the outputs of the case's control networks (v1/v2: an ARKit net on condition / drive_coeff /
    face_parts and a PD-FGC net on condition / emo_embedding), {insertion point: (B, C, F, h_i, w_i)}."""
    expression = {k: inp[k] for k in ("emo_embedding", "drive_coeff", "face_parts") if k in inp}
    control: dict[str, torch.Tensor] = {}
    for c in case.spec.get("checkpoints", []):
        if c.get("class") in CONTROL_CLASSES:
            net = load_hellomeme_module(ckpt_dir / c["folder"])
            control.update(net(inp["condition"].float(), **expression))
    return control


@handler("hellomeme.denoise_v1_image", "hellomeme.denoise_v1_video", "hellomeme.denoise_v2_image",
         "hellomeme.denoise_v2_video", "hellomeme.denoise_v3_image", "hellomeme.denoise_v3_video",
         "hellomeme.denoise_v4_image", "hellomeme.denoise_v4_video", "hellomeme.denoise_v5_image",
         "hellomeme.denoise_v5_video", "hellomeme.denoise_v5b_image", "hellomeme.denoise_v5b_video",
         "hellomeme.denoise_v5c_image", "hellomeme.denoise_v5c_video")
def denoise(case: Case, ckpt_dir: Path) -> dict:
    inp = case.inputs()
    denoiser, reference = _denoiser(case, ckpt_dir)
    ref_control = _group(inp, "ref_control.") or None
    cache = reference.reference_features(inp["latent_ref"], inp["text_ref"], control=ref_control)
    out = {f"ref_cache.{k}": v for k, v in cache.items()}
    control = _group(inp, "control.")  # v3+: the control features are inputs
    if not control and "condition" in inp:
        control = _run_controls(case, ckpt_dir, inp)
        out.update({f"control.{k}": v for k, v in control.items()})
    pads = _group(inp, "pad.") or None
    noise_pred, _ = denoiser(inp["sample"], inp["timestep"], inp["text"], reference_cache=cache,
                             control=control or None, motion_pads=pads,
                             use_motion=denoiser.motion is not None, collect_cache=False)
    out["noise_pred"] = noise_pred
    return out


def _models(case: Case, ckpt_dir: Path) -> HelloMemeModels:
    denoiser, reference = _denoiser(case, ckpt_dir)
    return HelloMemeModels(
        version=case.spec["versions"][0], denoiser=denoiser, reference_unet=reference,
        encode_vae=load_vae_folder(ckpt_dir / SD15 / "vae"), decode_vae=load_vae_folder(ckpt_dir / "checkpoint/vae"),
        dtype=torch.float32)


@handler("hellomeme.pipeline_v5c_image", "hellomeme.pipeline_v5_image", "hellomeme.pipeline_v5b_image")
def pipeline_image(case: Case, ckpt_dir: Path) -> dict:
    inp = case.inputs()
    s = case.settings
    models = _models(case, ckpt_dir)
    ref_controls = _group(inp, "ref_control.")
    out: dict[str, torch.Tensor] = {}

    def observe(event: str, data: dict) -> None:
        if event == "reference_cache":
            out.update({f"ref_cache.{k}": v for k, v in data["cache"].items()})
        elif event == "step":
            out[f"trace.step{data['step']}.noise_pred_cfg"] = data["noise_pred"]
            out[f"trace.step{data['step']}.latents"] = data["latents"]

    result = generate_image(
        models, _runtime(), inp["ref_image"], inp["prompt_embeds"],
        controls=PrecomputedControls.from_cfg_batch(_group(inp, "control.")),
        negative_prompt_embeds=inp.get("negative_prompt_embeds"),
        reference_controls=PrecomputedControls.from_cfg_batch(ref_controls) if ref_controls else None,
        steps=int(s["steps"]), guidance_scale=float(s["guidance_scale"]), noise=_draws(case, inp),
        scheduler_config=s.get("scheduler_config"), observer=observe)
    out["latents"] = result.latents
    out["image"] = result.image[0]
    return out


@handler("hellomeme.pipeline_v5_video", "hellomeme.pipeline_v5b_video")
def pipeline_video(case: Case, ckpt_dir: Path) -> dict:
    inp = case.inputs()
    s = case.settings
    models = _models(case, ckpt_dir)
    out: dict[str, torch.Tensor] = {}
    calls = []

    def observe(event: str, data: dict) -> None:
        if event == "step":
            k = len(calls)
            calls.append(data["latents"].shape[2])
            out[f"trace.call{k}.noise_pred_cfg"] = data["noise_pred"]
            out[f"trace.call{k}.latents"] = data["latents"]

    controls = PrecomputedControls(_group(inp, "control."), _group(inp, "control_neg.") or None)
    job = VideoGeneration(
        models, _runtime(), inp["ref_image"], inp["prompt_embeds"], controls,
        negative_prompt_embeds=inp.get("negative_prompt_embeds"), num_frames=int(s["frames"]),
        steps=int(s["steps"]), guidance_scale=float(s["guidance_scale"]), noise=_draws(case, inp),
        window=int(s.get("window", 12)), stride=int(s.get("stride", 11)),
        scheduler_config=s.get("scheduler_config"), observer=observe)
    frames = {}
    last = int(s["frames"]) - 1
    for index, image in job:
        if index in (0, last):
            frames[index] = image[0]
    expected_calls = [c["frames"] for c in s.get("scheduler_calls", [])]
    if expected_calls and calls != expected_calls:
        raise AssertionError(f"scheduler call order {calls} != recorded {expected_calls}")
    out["latents"] = job.latents
    out["frame_first"] = frames[0]
    out["frame_last"] = frames[last]
    return out
