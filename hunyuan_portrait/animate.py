"""HunyuanPortrait generation under a runtime: sampling from cached conditions, paste-back, identity scores.

:func:`animate` draws the two official Gaussians from ``seed`` (CPU generator: the same frames on every device),
pads the motion tokens, denoises with the sequence on the host and one window on the accelerator at a time, and
decodes chunk by chunk to the host. A progress update per window (and per decoded chunk) is also the cancellation
point. :func:`pasted_frames` puts the frames back into the full-size reference with the released soft rectangle;
:func:`identity_scores` gives the ArcFace similarity of every generated frame to the reference, summarised per
sampling window, with the detector and ArcFace session already loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from . import paste_back, preprocess
from . import vae as hp_vae
from .pipeline import PortraitSettings, decode, denoise, initial_draws, iter_pasted_frames
from .sampler import pad_motion, window_starts


def settings_for(conditions, **overrides) -> PortraitSettings:
    """Sampler settings at the conditions' crop size (the official values for everything not overridden)."""
    return PortraitSettings(width=conditions.size, height=conditions.size, **overrides)


def progress_total(settings: PortraitSettings, frames: int) -> int:
    """Progress units of one run: every window of every step, then every decoded frame of the padded sequence."""
    padded = settings.padded_length(frames)
    windows = len(window_starts(padded, settings.n_sample_frames, settings.overlap, 0))
    return settings.num_inference_steps * windows + padded


def _denoised(bundle, conditions, s: PortraitSettings, seed: int, rt, bar, speed=None, job=None):
    """The final latents (1, F, 4, h, w) of the padded sequence on the host; the sampling models loaded. ``job``: a
    resume entry (``hunyuan_portrait/resume.py``): the state is saved after every step and a saved one continued."""
    from .resume import saved_state, step_saver

    generator = torch.Generator().manual_seed(int(seed))
    noise_aug, initial = initial_draws(s, conditions.num_frames, generator)
    motion = pad_motion(conditions.motion[None], s.pad_frames)                          # (1, F, 64, 1024) host
    ref = conditions.source.ref_img[None]                                               # (1, 3, S, S)
    rt.load(bundle.sampling_models)
    resume_from = saved_state(job, tuple(initial.shape), s.num_inference_steps)
    if resume_from is not None:  # the progress bar starts at the resumed step
        bar.update(resume_from[0] * len(window_starts(initial.shape[1], s.n_sample_frames, s.overlap, 0)))
    return denoise(bundle.models(), ref, conditions.appearance, motion, s, noise_aug, initial,
                   on_window=lambda step, k, out: bar.update(1), interrupt=rt.check_interrupted, speed=speed,
                   on_step=step_saver(job), resume_from=resume_from)


@torch.no_grad()
def animate(bundle, conditions, settings: PortraitSettings, seed: int, runtime=None, speed=None,
            resume=None) -> torch.Tensor:
    """Conditions -> the generated crops as an IMAGE (N, S, S, 3) float32 in [0, 1] on the host. ``speed``: opt-in
    accelerations of the UNet (``runtime.speed.SpeedOptions``; None: the exact path). ``resume``: a
    ``runtime.resume.ResumeOptions`` (None: off): a cancelled or crashed run continues from its last step."""
    from .resume import hunyuan_job

    rt = runtime or bundle.runtime
    s = settings
    with rt.progress(progress_total(s, conditions.num_frames), desc="HunyuanPortrait") as bar:
        rt.load(bundle.sampling_models)
        job = hunyuan_job(resume, bundle, conditions, s, seed, speed)
        final = _denoised(bundle, conditions, s, seed, rt, bar, speed, job)
        video = decode(bundle.models(), final, s, progress=bar.update)                  # (1, 3, N, S, S)
    if job is not None:
        job.finish()
    return video[0].permute(1, 2, 3, 0).contiguous()                                   # (N, S, S, 3)


@torch.no_grad()
def iter_animate(bundle, conditions, settings: PortraitSettings, seed: int, runtime=None,
                 speed=None, resume=None) -> Iterator[torch.Tensor]:
    """:func:`animate` handed out one decode chunk at a time: IMAGE batches (n, S, S, 3) float32 in [0, 1] on the
    host, in order, pads trimmed. The chunks are the ones :func:`animate` decodes (``decode_chunk_size`` frames of
    the padded sequence, decoded independently), so the frames are the same; only one chunk is held at a time."""
    rt = runtime or bundle.runtime
    s = settings
    from .resume import hunyuan_job

    with rt.progress(progress_total(s, conditions.num_frames), desc="HunyuanPortrait") as bar:
        rt.load(bundle.sampling_models)
        job = hunyuan_job(resume, bundle, conditions, s, seed, speed)
        final = _denoised(bundle, conditions, s, seed, rt, bar, speed, job)             # (1, F, 4, h, w)
        vae_model = bundle.models().vae
        total, pad, chunk = final.shape[1], s.pad_frames, s.decode_chunk_size
        for start in range(0, total, chunk):
            raw = hp_vae.decode_latents(vae_model, final[:, start:start + chunk], chunk=chunk, out_device="cpu",
                                        progress=bar.update)                            # (1, 3, c, S, S)
            video = hp_vae.to_video(raw, inplace=True)[0]                               # (3, c, S, S)
            lo, hi = max(pad - start, 0), min(total - pad - start, video.shape[1])
            if hi > lo:
                yield video[:, lo:hi].permute(1, 2, 3, 0).contiguous()                  # (n, S, S, 3)
    if job is not None:
        job.finish()


def pasted_frames(conditions, frames: torch.Tensor, border_ratio: float = 0.1,
                  progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Generated crops (N, S, S, 3) in [0, 1] -> (N, H0, W0, 3) float32: each crop truncated to uint8 as released,
    resized to the source crop box and blended into the static reference with linear ramps over ``border_ratio``
    of the box at each edge. The output is allocated once."""
    original = conditions.original
    out = torch.empty((frames.shape[0], *original.shape[:2], 3), dtype=torch.float32)
    video = frames.permute(3, 0, 1, 2)[None]                                            # (1, 3, N, S, S) view
    for t, frame in enumerate(iter_pasted_frames(original, video, conditions.source.crop_bbox, border_ratio)):
        out[t] = torch.from_numpy(frame) / 255.0
        if progress is not None:
            progress(1)
    return out


def iter_pasted(conditions, frames: torch.Tensor, border_ratio: float = 0.1) -> Iterator[np.ndarray]:
    """The frames of :func:`pasted_frames` as uint8 (H0, W0, 3), one at a time (for a streaming video writer)."""
    video = frames.permute(3, 0, 1, 2)[None]                                            # (1, 3, n, S, S) view
    return iter_pasted_frames(conditions.original, video, conditions.source.crop_bbox, border_ratio)


@dataclass
class IdentityReport:
    per_frame: list[Optional[float]]   # cosine similarity to the reference; None where no face was found
    window: int

    @property
    def mean(self) -> float:
        values = [v for v in self.per_frame if v is not None]
        return float(np.mean(values)) if values else float("nan")

    def windows(self) -> list[dict]:
        out = []
        for start in range(0, len(self.per_frame), self.window):
            part = self.per_frame[start:start + self.window]
            values = [v for v in part if v is not None]
            out.append({"frames": [start, start + len(part) - 1],
                        "mean": round(float(np.mean(values)), 4) if values else None,
                        "min": round(float(np.min(values)), 4) if values else None,
                        "no_face": len(part) - len(values)})
        return out

    def to_dict(self) -> dict:
        mean = self.mean
        return {"metric": "ArcFace cosine similarity to the reference", "mean": None if math.isnan(mean) else
                round(mean, 4), "windows": self.windows(),
                "per_frame": [None if v is None else round(v, 4) for v in self.per_frame]}

    def summary(self) -> str:
        rows = [f"frames {w['frames'][0]}-{w['frames'][1]}: "
                + (f"mean {w['mean']:.3f}, min {w['min']:.3f}" if w["mean"] is not None else "no face")
                + (f" ({w['no_face']} frames without a face)" if w["no_face"] and w["mean"] is not None else "")
                for w in self.windows()]
        return f"identity (ArcFace similarity to the reference): mean {self.mean:.3f}\n" + "\n".join(rows)


def identity_scores(bundle, conditions, frames: torch.Tensor, window: int,
                    progress: Optional[Callable[[int], None]] = None) -> IdentityReport | None:
    """ArcFace similarity of each generated crop (N, S, S, 3) to the reference embedding (None without ArcFace or
    with a zero reference embedding). Each frame: YOLOv5-face, the largest face aligned as the reference was."""
    if bundle.arcface is None or not float(conditions.id_embedding.abs().sum()):
        return None
    detect = bundle.detector()
    reference = conditions.id_embedding.reshape(-1).numpy().astype(np.float64)
    scores: list[Optional[float]] = []
    for t in range(frames.shape[0]):
        crop = paste_back.video_to_uint8(frames[t])
        boxes, landmarks = detect(crop)
        if np.asarray(boxes).size == 0:
            scores.append(None)
        else:
            aligned, _ = preprocess.align_face(crop, np.asarray(landmarks)[preprocess.largest_face(boxes)])
            emb = bundle.arcface.embed(aligned).reshape(-1).astype(np.float64)
            scores.append(float(emb @ reference))
        if progress is not None:
            progress(1)
    return IdentityReport(per_frame=scores, window=window)


__all__ = ["IdentityReport", "animate", "identity_scores", "iter_animate", "iter_pasted", "pasted_frames",
           "progress_total", "settings_for"]
