"""MEMO parity handlers for the sampler: the flow-matching schedule and a short autoregressive generation."""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.memo import loading
from portrait_animation.motion import memo_sampler as ms


@handler("memo.flow_match_schedule")
def flow_match_schedule(case: Case, ckpt_dir: Path) -> dict:
    s = case.settings
    out = {}
    for n in s["step_counts"]:
        sched = ms.flow_match_schedule(n)
        out[f"timesteps_{n}"] = sched.timesteps
        out[f"sigmas_{n}"] = sched.sigmas
    inputs = case.inputs()
    sched = ms.flow_match_schedule(s["euler_steps"])
    x = inputs["x0"]
    for i in range(s["euler_steps"]):
        x = ms.euler_step(x, inputs[f"velocity{i}"], sched.sigmas[i], sched.sigmas[i + 1])
        out[f"euler_x{i + 1}"] = x
    return out


@handler("memo.pipeline_short")
def pipeline_short(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.sk_attention.base_models import load_vae_folder

    s = case.settings
    inputs = case.inputs()
    sampler = ms.MemoSampler(
        vae=load_vae_folder(ckpt_dir / "vae"),
        reference_net=loading.load_reference_net(ckpt_dir / "reference_net"),
        diffusion_net=loading.load_diffusion_net(ckpt_dir / "diffusion_net"),
        image_proj=loading.load_image_proj(ckpt_dir / "image_proj"),
        settings=ms.MemoSamplerSettings(steps=s["steps"], guidance_scale=s["guidance_scale"],
                                        frames_per_clip=s["frames_per_clip"], num_past_frames=s["num_past_frames"],
                                        num_init_past_frames=s.get("num_init_past_frames")))
    clips = s["clips"]
    audio = torch.cat([inputs[f"clip{k}.audio_tokens"] for k in range(clips)], dim=1)
    emotions = torch.cat([inputs[f"clip{k}.frame_emotions"] for k in range(clips)])
    out: dict[str, torch.Tensor] = {}

    def record(name, t):
        out[name] = t.detach().float().cpu().clone()

    for clip in sampler.clips(inputs["ref_image"], inputs["face_emb"], audio, emotions,
                              noise=lambda k, shape: inputs[f"clip{k}.noise"], inspect=record):
        out[f"clip{clip.index}.frames"] = clip.frames
        if "clip_emotion_labels" in s:
            assert clip.emotion == s["clip_emotion_labels"][clip.index], "clip emotion (mode of the frame labels)"
    return out
