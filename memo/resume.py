"""MEMO's resume key: everything that determines the frames of a talking-portrait run (see ``runtime/resume.py``).

A segment is one finished clip (its final latents, about 1 MB per clip at 512x512); the sampler continues from the
last saved clip by replaying the finished clips' temporal-memory updates (``motion/memo_sampler.py``)."""
from __future__ import annotations

import torch

from ..runtime.resume import ResumeJob, ResumeOptions, device_identity, open_job, settings_dict


def memo_job(options: ResumeOptions | None, bundle, reference: torch.Tensor, face_emb: torch.Tensor,
             audio_tokens: torch.Tensor, frame_emotions: torch.Tensor, settings, sampler_settings, speed
             ) -> ResumeJob | None:
    """The run's cache entry (None when resume is off): keyed by the reference tensor, the identity embedding, the
    audio tokens and emotions, every setting (seed included), the sampling models' weights, dtype, device and the
    speed options."""
    if options is None or not options.active:
        return None
    models = [h.module for h in (bundle.vae, bundle.reference_net, bundle.diffusion_net, bundle.image_proj)]
    device = next(bundle.diffusion_net.module.parameters()).device
    return open_job(options, "memo", reference, face_emb, audio_tokens, frame_emotions, settings, sampler_settings,
                    models, str(bundle.dtype), device_identity(device), speed,
                    describe={"settings": settings_dict(settings), "frames": int(audio_tokens.shape[1])})
