"""HunyuanPortrait's resume segments (see ``runtime/resume.py``).

Every step denoises ALL the overlapping windows of the padded sequence, with a window shift that changes from step
to step, so no window is final before the last step: the resumable unit is the whole-sequence latent state after a
step (about 64 KB per frame at 512x512 in fp32). The scheduler is stateless (the step index picks sigma, shift and
guidance scales) and both Gaussian draws are made up front from the seed, so ``(steps done, state)`` is all a run
needs to continue bit-identically. The state is rewritten after every step (one segment, ``state``); decoding is
recomputed from the final state."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..runtime.resume import ResumeJob, ResumeOptions, device_identity, open_job, settings_dict

log = logging.getLogger(__name__)


def hunyuan_job(options: ResumeOptions | None, bundle, conditions, settings, seed: int, speed) -> ResumeJob | None:
    """The run's cache entry (None when resume is off): keyed by the conditions (reference crop, appearance and
    motion tokens), every setting, the seed, the sampling models' weights, dtype, device and speed options."""
    if options is None or not options.active:
        return None
    m = bundle.models()
    device = next(m.unet.parameters()).device
    return open_job(options, "hunyuan_portrait", conditions.source.ref_img, conditions.appearance, conditions.motion,
                    settings, int(seed), [m.unet, m.vae, m.pose_guider], m.scheduler_config,
                    str(next(m.unet.parameters()).dtype), device_identity(device), speed,
                    describe={"settings": settings_dict(settings), "frames": int(conditions.num_frames)})


def saved_state(job: ResumeJob | None, shape: tuple, n_steps: int) -> Optional[tuple[int, torch.Tensor]]:
    """``(steps done, state)`` from the job's ``state`` segment when it fits this run, else None."""
    if job is None:
        return None
    seg = job.load("state")
    if seg is None:
        return None
    done, state = seg.get("done"), seg.get("state")
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != tuple(shape) or not isinstance(done, int) \
            or not 0 < done <= n_steps:
        log.warning("resume cache: the saved HunyuanPortrait state does not fit this run; starting over")
        job.drop("state")
        return None
    job.resuming("step", done, n_steps)
    return done, state


def step_saver(job: ResumeJob | None):
    """An ``on_step(i, state)`` callback writing the state after step ``i`` (None without a job)."""
    if job is None:
        return None
    return lambda i, state: job.save("state", {"done": int(i) + 1, "state": state.detach().to("cpu").clone()})
