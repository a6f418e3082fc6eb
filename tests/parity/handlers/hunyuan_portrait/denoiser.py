"""HunyuanPortrait parity handlers for the denoiser: one decoupled cross-attention, one spatio-temporal transformer
(both from subsets of ``unet.pth`` under their real key names, prefix stripped, strict), the UNet on the three guidance
branches, the Euler scheduler, the temporal VAE and the long-sequence sampler. Whole files load through the pack's
loaders (``hunyuan_portrait.unet`` / ``vae`` / ``scheduler``) exactly as a download would."""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.hunyuan_portrait import sampler as hp_sampler
from portrait_animation.hunyuan_portrait import scheduler as hp_scheduler
from portrait_animation.hunyuan_portrait import unet as hp_unet
from portrait_animation.hunyuan_portrait import vae as hp_vae
from portrait_animation.hunyuan_portrait.attention import DecoupledCrossAttnProcessor, install_motion_processors
from portrait_animation.loaders.checkpoint import load_strict, read_state_dict

UNET_FILE = "hyportrait/unet.pth"


def _subset(case: Case, ckpt_dir: Path) -> tuple[dict, str]:
    files = case.spec["weights"]["files"]
    path = ckpt_dir / files[0]["path"]
    prefix = case.settings["key_prefix"]
    sd = read_state_dict(path)
    outside = [k for k in sd if not k.startswith(prefix)]
    assert not outside, f"keys outside {prefix!r}: {outside[:5]}"
    return {k[len(prefix):]: v for k, v in sd.items()}, str(path)


@handler("hunyuan_portrait.ip_attention")
def ip_attention(case: Case, ckpt_dir: Path) -> dict:
    from diffusers.models.attention_processor import Attention

    s = case.settings
    sd, source = _subset(case, ckpt_dir)
    attn = Attention(query_dim=s["hidden_size"], cross_attention_dim=1024, heads=s["heads"], dim_head=s["head_dim"])
    attn.set_processor(DecoupledCrossAttnProcessor(s["hidden_size"], 1024, 1, s["ip_scale"]))
    load_strict(attn, sd, source=source)
    attn.eval()
    x = case.inputs()
    h, app, mot = x["hidden_states"], x["appearance_tokens"], x["motion_tokens"]
    return {"out": attn(h, encoder_hidden_states=(app, [mot])),
            "out_zero_motion": attn(h, encoder_hidden_states=(app, [torch.zeros_like(mot)]))}


@handler("hunyuan_portrait.transformer_spatiotemporal")
def transformer_spatiotemporal(case: Case, ckpt_dir: Path) -> dict:
    s = case.settings
    sd, source = _subset(case, ckpt_dir)
    c, heads = s["channels"], s["heads"]
    block = hp_unet.SpatioTemporalTransformer(c, heads, c // heads, 1, 1024)
    install_motion_processors(block, 1, s["ip_scale"])
    load_strict(block, sd, source=source)
    block.eval()
    x = case.inputs()
    out = block(x["hidden_states"], (x["appearance_tokens"], [x["motion_tokens"]]), num_frames=s["frames"])
    return {"out": out}


@handler("hunyuan_portrait.unet_forward")
def unet_forward(case: Case, ckpt_dir: Path) -> dict:
    s = case.settings
    unet = hp_unet.load_unet(ckpt_dir / UNET_FILE, config=ckpt_dir / "unet")
    x = case.inputs()
    latents, sigma = x["noisy_latents"], x["sigma"]
    frames = latents.shape[1]
    scaled = latents / ((sigma ** 2 + 1) ** 0.5)
    unet_input = hp_sampler.cfg_model_input(scaled, x["image_latents"])     # (3, F, 8, h, w)
    # the official call: per-frame contexts [0, app, app] and [0, 0, mot], flattened over (branch, frame)
    app = x["appearance_tokens"].unsqueeze(1).expand(-1, frames, -1, -1)
    app = torch.cat([torch.zeros_like(app), app, app]).flatten(0, 1)
    _, motion = hp_sampler.cfg_context(x["appearance_tokens"], x["motion_tokens"])
    settings = hp_sampler.SamplerSettings(fps=s["fps"], motion_bucket_id=s["motion_bucket_id"],
                                          noise_aug_strength=s["noise_aug_strength"])
    ids = hp_sampler.added_time_ids(settings, 1)
    pose = torch.cat([x["pose_features"]] * 3)
    t = 0.25 * sigma.log()
    out = unet(unet_input, t, (app, motion), ids, pose)
    guided = hp_sampler.three_branch_guidance(out, s["guidance_appearance"], s["guidance_motion"])
    return {"unet_input": unet_input, "model_output": out, "guided": guided}


@handler("hunyuan_portrait.scheduler_euler")
def scheduler_euler(case: Case, ckpt_dir: Path) -> dict:
    s = case.settings
    cfg = hp_scheduler.scheduler_config(ckpt_dir / "scheduler")
    out = {}
    for n in s["schedules"]:
        sched = hp_scheduler.EulerVScheduler(cfg, n)
        out[f"sigmas_{n}"], out[f"timesteps_{n}"] = sched.sigmas, sched.timesteps
    sched = hp_scheduler.EulerVScheduler(cfg, s["num_inference_steps"])
    start = sched.start_index(s["i2i_noise_strength"])
    out["run_timesteps"] = sched.timesteps[start:]
    x = case.inputs()
    latents = sched.add_noise(x["ref_latents"], x["noise"], start)
    out["init_latents"] = latents
    for i in range(s["steps_run"]):
        v, step = x["model_outputs"][i], start + i
        out[f"scaled_input_{i}"] = sched.scale_model_input(latents, step)
        out[f"pred_x0_{i}"] = sched.predict_x0(v, latents, step)
        latents = sched.step(v, latents, step)
        out[f"latents_after_step_{i}"] = latents
    return out


@handler("hunyuan_portrait.vae_tiny")
def vae_tiny(case: Case, ckpt_dir: Path) -> dict:
    s = case.settings
    vae = hp_vae.load_vae(ckpt_dir, dtype=torch.float32)
    x = case.inputs()
    ref, cond = hp_vae.encode_reference(vae, x["ref_image"], s["noise_aug_strength"], x["noise_aug_noise"])
    frames = hp_vae.decode_latents(vae, x["latents"], chunk=s["decode_chunk_size"])
    return {"ref_latents": ref, "image_latents_cfg": torch.cat([torch.zeros_like(cond), cond, cond]),
            "frames": frames, "video": hp_vae.to_video(frames)}


@handler("hunyuan_portrait.pipeline_sampler")
def pipeline_sampler(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.hunyuan_portrait import appearance_loading

    s = case.settings
    x = case.inputs()
    dino = appearance_loading.load_dino(ckpt_dir / appearance_loading.DINO_FILE, dtype=torch.float32)
    proj = appearance_loading.load_image_proj(ckpt_dir / appearance_loading.IMAGE_PROJ_FILE, dtype=torch.float32)
    appearance = proj(dino(x["transformed_image"], x["arcface_embedding"]))        # (1, 64, 1024)
    pose = _pose_features(ckpt_dir, s["height"], s["width"])                          # (320, h, w)

    unet = hp_unet.load_unet(ckpt_dir / UNET_FILE, config=ckpt_dir / "unet")
    vae = hp_vae.load_vae(ckpt_dir, dtype=torch.float32)
    sched = hp_scheduler.load_scheduler(ckpt_dir / "scheduler", s["num_inference_steps"])
    settings = hp_sampler.SamplerSettings(
        steps=s["num_inference_steps"], window=s["frames_per_batch"], overlap=s["overlap"],
        shift_offset=s["shift_offset"], min_appearance_guidance=s["min_guidance_scale1"],
        max_appearance_guidance=s["max_guidance_scale1"], min_motion_guidance=s["min_guidance_scale2"],
        max_motion_guidance=s["max_guidance_scale2"], fps=s["fps"], motion_bucket_id=s["motion_bucket_id"],
        noise_aug_strength=s["noise_aug_strength"], i2i_strength=s["i2i_noise_strength"])

    ref, cond = hp_vae.encode_reference(vae, x["ref_image"], s["noise_aug_strength"], x["noise_aug_noise"])
    init = sched.add_noise(ref, x["initial_noise"], sched.start_index(settings.i2i_strength))
    windows: dict[int, list] = {}
    final = hp_sampler.sample(unet, sched, init, cond, appearance, x["motion_tokens"], pose, settings,
                              on_window=lambda i, k, w: windows.setdefault(i, []).append(w))
    frames = hp_vae.decode_latents(vae, final, chunk=s["decode_chunk_size"])
    out = {"final_latents": final, "frames": frames}
    for i, ws in windows.items():
        out[f"window_latents_step{i}"] = torch.stack(ws)
    return out


def _pose_features(ckpt_dir: Path, height: int, width: int) -> torch.Tensor:
    """The pose guider's map of the all-zero pose image (C0, h, w), through the pack's pose-guider loader."""
    import importlib

    loader = None
    for name in ("loading", "pose_guider"):
        try:
            module = importlib.import_module(f"portrait_animation.hunyuan_portrait.{name}")
        except ModuleNotFoundError:
            continue
        loader = getattr(module, "load_pose_guider", None) or loader
    assert loader is not None, "the pack has no hunyuan_portrait load_pose_guider yet"
    guider = loader(ckpt_dir / "hyportrait/pose_guider.pth", dtype=torch.float32)
    out = guider(torch.zeros(1, 3, 1, height, width))   # (B, C0, F, h, w), the original's layout
    return out[0, :, 0]
