"""HunyuanPortrait's resume segments (see ``runtime/resume.py``).

Every step denoises ALL the overlapping windows of the padded sequence, with a window shift that changes from step
to step, so no window is final before the last step: the resumable unit is the whole-sequence latent state after a
step (about 64 KB per frame at 512x512 in fp32). The scheduler is stateless (the step index picks sigma, shift and
guidance scales) and both Gaussian draws are made up front from the seed, so ``(steps done, state)`` is all a run
needs to continue bit-identically. The state is rewritten after every step (one segment, ``state``); decoding is
recomputed from the final state. Under the identity guard the run's and its retries' entries are kept together
until the guard is done (:func:`guard_scope`)."""
from __future__ import annotations

import logging
from typing import Callable, Optional

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


GUARD_PREFIX = "hunyuan_portrait_guard"


def guard_scope(options: ResumeOptions | None, bundle, conditions, settings, seed: int, speed
                ) -> tuple[ResumeOptions | None, Callable[[], None]]:
    """Resume for a run under the identity guard: ``(options for the main run and every retry, done)``.

    The guard's retries (``hunyuan_portrait/reanchor.py``) start after the main run finished, which deletes a
    finished run's entry: a cancel during the retries would then sample the whole run again. Here the main run's and
    every retry's entries go into one folder of their own (``<folder>/hunyuan_portrait_guard-<main key>``), all kept
    until ``done()`` is called after the guard; a re-queue then decodes the finished main run and finished retries
    from their last step and continues an interrupted retry from its step (each entry keyed by its own inputs, so the
    frames are the uninterrupted run's). ``done()`` deletes the folder (unless the user's ``keep``)."""
    import shutil
    from dataclasses import replace
    from pathlib import Path

    main = hunyuan_job(options, bundle, conditions, settings, seed, speed)
    if main is None:
        return options, lambda: None
    folder = Path(options.folder) / f"{GUARD_PREFIX}-{main.key}"
    held = replace(options, folder=str(folder), keep=True)

    def done() -> None:
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)

    return held, done
