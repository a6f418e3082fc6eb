"""HelloMeme video's resume segments (see ``runtime/resume.py``).

Why steps, not windows: every denoising step of a pass predicts ALL its windows, averages them over the shared
frames and steps the scheduler over the whole pass (v3-v5b keyframe passes and the v1/v2 stage 2 alike), so a window
is final only after the pass's last step. The resumable unit is therefore the pass's whole latent state after a step,
with what the next step needs: the scheduler's state (DPM++ SDE's model-output history, the step index), the seeded
noise generator's state (DPM++ SDE draws noise every step) and the keyframe latents of the deeper passes (their
reference-UNet pads are recomputed from them on demand). v1/v2 stage 1 (every frame alone) checkpoints after each
frame. One segment (``state``) is rewritten after every step; a few MB per 100 frames at 512x512.

Only :class:`~.schedulers.SeededNoise` runs resume (a replayed :class:`~.schedulers.RecordedNoise` has no state to
save)."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..runtime.resume import ResumeJob, ResumeOptions, device_identity, open_job

log = logging.getLogger(__name__)

SCHEDULER_KEYS = ("model_outputs", "lower_order_nums", "_step_index", "_begin_index", "is_scale_input_called")


def hellomeme_job(options: ResumeOptions | None, models, *key_parts, describe: dict | None = None
                  ) -> ResumeJob | None:
    """The run's cache entry (None when resume is off): ``key_parts`` (the caller's inputs: driving conditions,
    reference, prompts, settings, seed, speed options) plus every network's weights, dtype and device."""
    if options is None or not options.active:
        return None
    nets = [m for m in vars(models).values() if isinstance(m, torch.nn.Module)]
    p = next(models.denoiser.parameters())
    return open_job(options, "hellomeme", models.version, nets, str(p.dtype), device_identity(p.device), *key_parts,
                    describe=describe)


def scheduler_state(sched) -> dict:
    out = {}
    for key in SCHEDULER_KEYS:
        if hasattr(sched, key):
            value = getattr(sched, key)
            if isinstance(value, list):
                value = [v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else v for v in value]
            elif isinstance(value, torch.Tensor):
                value = value.detach().to("cpu").clone()
            out[key] = value
    return out


def load_scheduler_state(sched, state: dict, device) -> None:
    """Put a saved state into a scheduler that had ``set_steps`` called with the same step count."""
    for key, value in state.items():
        if isinstance(value, list):
            value = [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
        elif isinstance(value, torch.Tensor):
            value = value.to(device)
        setattr(sched, key, value)


class VideoCheckpoints:
    """Saves and finds a video run's state: ``phase`` ("pass" k / "stage1" / "stage2"), ``index`` (pass number or
    0), ``done`` (steps or stage-1 frames finished), ``latents``, the scheduler, the noise generator and the
    keyframe latents."""

    def __init__(self, job: ResumeJob, noise):
        self.job = job
        self.generator = noise.generator

    def save(self, phase: str, index: int, done: int, latents: torch.Tensor, sched=None,
             pads: Optional[dict] = None, extra: Optional[dict] = None) -> None:
        frames = sorted(pads) if pads else []
        self.job.save("state", {
            "phase": phase, "index": int(index), "done": int(done),
            "latents": latents.detach().to("cpu").clone(),
            "scheduler": scheduler_state(sched) if sched is not None else {},
            "generator": self.generator.get_state(),
            "pad_frames": frames,
            "pad_latents": [pads[f].detach().to("cpu").clone() for f in frames],
            **(extra or {})})

    def load(self, describe_total: int, describe_done) -> Optional[dict]:
        seg = self.job.load("state")
        if seg is None:
            return None
        if not all(k in seg for k in ("phase", "index", "done", "latents", "generator")):
            log.warning("resume cache: the saved HelloMeme state is incomplete; starting over")
            self.job.drop("state")
            return None
        done = describe_done(seg)
        if done is None:
            log.warning("resume cache: the saved HelloMeme state does not fit this run; starting over")
            self.job.drop("state")
            return None
        self.generator.set_state(seg["generator"])
        seg["units"] = done
        self.job.resuming("step", done, describe_total)
        return seg

    def pads(self, seg: dict, device) -> dict:
        return {int(f): t.to(device) for f, t in zip(seg.get("pad_frames", []), seg.get("pad_latents", []))}
