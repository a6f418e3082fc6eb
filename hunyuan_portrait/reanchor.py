"""Re-anchoring a frame range of a HunyuanPortrait video: the range generated again as a sequence of its own.

HunyuanPortrait denoises every window jointly at every step (the window grid shifts each step), so one window cannot
be re-sampled inside the finished run. Every sequence is anchored on the reference by construction (the initial
latents are the reference's latents plus noise, the appearance tokens come from the reference), so the range is
made again as a short sequence: its driving motion tokens with ``context`` real neighbouring frames on each side (the
faded pads the sampler adds at both ends then fall on the context, not on the range), a new seed and, optionally,
stronger appearance guidance. The caller splices the range back (``metrics.identity_guard.splice``).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .animate import animate


@torch.no_grad()
def regenerate_range(bundle, conditions, settings, seed: int, start: int, stop: int, context: int = 4,
                     guidance_boost: float = 0.0, runtime=None, speed=None, resume=None) -> torch.Tensor:
    """Frames ``start .. stop - 1`` generated again: IMAGE ``(stop - start, S, S, 3)`` in [0, 1] on the host.

    The sequence is driving frames ``max(0, start - context) .. min(N, stop + context) - 1`` with the run's
    settings (pads, windows, steps), appearance guidance raised by ``guidance_boost`` and noise from ``seed``.
    ``resume``: ``runtime.resume.ResumeOptions`` for the range's own run (keyed by its inputs; see
    ``resume.guard_scope``)."""
    n = conditions.num_frames
    if not 0 <= start < stop <= n:
        raise ValueError(f"frame range {start}..{stop - 1} is outside the {n} driving frames")
    lo, hi = max(0, start - int(context)), min(n, stop + int(context))
    part = replace(conditions, motion=conditions.motion[lo:hi])                             # (hi - lo, 64, 1024)
    s = replace(settings,
                min_appearance_guidance_scale=settings.min_appearance_guidance_scale + guidance_boost,
                max_appearance_guidance_scale=settings.max_appearance_guidance_scale + guidance_boost)
    frames = animate(bundle, part, s, seed, runtime=runtime, speed=speed, resume=resume)   # (hi - lo, S, S, 3)
    return frames[start - lo:stop - lo]


__all__ = ["regenerate_range"]
