"""MEMO preflight: peak memory and time of :func:`.pipeline.talking_frames`, from a trace of the real sampler on
fake tensors (:mod:`runtime.preflight`).

The trace runs the first clip whole (reference encoding, the reference net, every denoising step of the CFG batch,
the VAE decode of its frames) and the first step of the second clip (past frames re-encoded, the temporal memory
read), with the sampling models' weights faked on the compute device. Later clips repeat the second clip's work
(the memory has a fixed size), so the peak does not grow with the audio; the time of the other clips follows from
the traced work per step. The node's output buffer (every frame, output ``frames``) is added on the host.

What the preflight may choose: the VAE batch (frames per VAE encode/decode call, :data:`VAE_BATCHES`), the one size of
a MEMO run that changes its memory and not its frames (the clips' frames are encoded and decoded one by one by the
VAE, whatever the batch). When the run does not fit with the default (4) and the caller left it on auto (None),
:func:`ensure` picks the largest that fits. Every other size changes the frames (clip length, past frames,
resolution) and is only suggested in the refusal; the temporal memory's host offload (``offload_memory``) moves
memory only between clips on a GPU and is not chosen here.
"""
from __future__ import annotations

import time
from dataclasses import astuple, replace
from types import SimpleNamespace
from typing import Optional

import torch

from ..runtime import preflight as pf

MODEL = "MEMO"
VAE_BATCHES = (1, 2, 4)         # the sampler's default (MemoSamplerSettings.vae_batch) is the largest
TRACED_STEPS = 2  # enough for every kind of step (the first one updates the memory); the time scales to `steps`
_CACHE: dict = {}


def stand_in_conditions(bundle, frames: int, clip_length: int, make):
    """Conditions of the right shapes for ``frames`` frames (padded to whole clips), made in the trace's fake mode."""
    cfg = bundle.audio_proj.module.config
    clips = max(1, -(-frames // clip_length))
    total = clips * clip_length
    return make(lambda: SimpleNamespace(
        audio_emb=torch.zeros(total, cfg.window, cfg.layers, cfg.channels), num_frames=total,
        frames_with_audio=frames, clip_length=clip_length, clip_emotions=[0] * clips))


def _conditions_key(bundle, frames: int, clip_length: int, conditions) -> tuple:
    """What of the conditions the trace depends on: the audio features (:func:`runtime.preflight.shapes_key`; without
    conditions those :func:`stand_in_conditions` makes)."""
    if conditions is None:
        conditions = stand_in_conditions(bundle, frames, clip_length, pf.on_meta)
    return pf.shapes_key(conditions.audio_emb)


def estimate(bundle, settings, frames: int, clip_length: int = 16, conditions=None, runtime=None,
             output: str = "frames", vae_batch: Optional[int] = None, speed=None) -> pf.Estimate:
    """The estimate of a MEMO Talking Portrait run of ``frames`` frames (``conditions``: the real ones when there
    are). ``output`` "frames": every frame is kept on the host as well (the node's IMAGE). ``vae_batch``: frames per
    VAE call (None: the sampler's default). ``speed``: the run's Speed Options (:func:`runtime.preflight.traced_speed`:
    ``sdpa_math``'s score matrices and ``cache_interval``'s stored features are traced)."""
    from ..motion.memo_sampler import MemoSamplerSettings
    from .pipeline import talking_frames

    vae_batch = MemoSamplerSettings.vae_batch if vae_batch is None else max(1, int(vae_batch))
    rt = runtime or bundle.runtime
    device = torch.device(rt.device)
    if conditions is not None:
        frames, clip_length = conditions.frames_with_audio, conditions.clip_length
    key = (id(bundle.diffusion_net.module), astuple(settings), frames, clip_length, str(device), output,
           _conditions_key(bundle, frames, clip_length, conditions), vae_batch, pf.speed_key(speed))
    if key in _CACHE:
        return _CACHE[key]
    started = time.perf_counter()
    resident = [h.module for h in bundle.sampling_models]
    clips = max(1, -(-frames // clip_length))
    traced = replace(settings, steps=min(settings.steps, TRACED_STEPS))

    def run(trt, make):
        cond = conditions if conditions is not None else stand_in_conditions(bundle, frames, clip_length, make)
        ref = make(lambda: torch.zeros(1, settings.height, settings.width, 3))
        face = make(lambda: torch.zeros(1, 512))
        return talking_frames(bundle, ref, cond, face, traced, runtime=trt, vae_batch=vae_batch,
                              speed=pf.traced_speed(speed))

    units = traced.steps + (1 if clips > 1 else 0)
    t = pf.trace(run, resident, device, stop_after=units)
    # every clip: `steps` denoising steps; the traced units hold clip 0's (with its decode) and clip 1's first
    per_step = (t.marks[-1] - t.marks[traced.steps - 1]) if clips > 1 else \
        (t.marks[-1] - t.marks[0]) / max(len(t.marks) - 1, 1)
    first_clip = t.marks[traced.steps - 1] if t.marks else t.work
    done = (first_clip + per_step * (settings.steps - traced.steps)) * clips
    out = frames * settings.height * settings.width * 3 * 4 if output == "frames" else 0
    peak = t.device_peak(device)
    if device.type == "cpu":
        work, host = peak + out, 0
    else:
        work, host = peak, t.device_peak("cpu") + out
    dtype = next(bundle.diffusion_net.module.parameters()).dtype
    est = pf.Estimate(
        model=MODEL, device=str(device), weights=pf.module_bytes(resident), work=work, host=host, flops=done.flops,
        seconds=pf.seconds(done, device, dtype), ops=done.ops,
        time_parts=done.breakdown(pf.rates(device, dtype)), stages={"clip": peak},
        settings={"frames": frames, "clips": clips, "clip_length": clip_length, "resolution": settings.width,
                  "steps": settings.steps, "past_frames": settings.num_past_frames, "vae_batch": vae_batch,
                  "output": output,
                  "dtype": str(dtype).replace("torch.", ""), **pf.speed_settings(speed)})
    est.trace_seconds = time.perf_counter() - started
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[key] = est
    return est


FIXES = ("a lower 'resolution'", "a shorter 'clip_length' on MEMO Audio Conditioner", "fewer 'past_frames'",
         "bf16 on MEMO Loader (where the GPU supports it)", "output 'video file' for long audio",
         "closing other programs or models that use the memory")


def ensure(bundle, conditions, settings, runtime=None, output: str = "frames", free: Optional[int] = None,
           vae_batch: Optional[int] = None, speed=None) -> pf.Estimate:
    """Refuse before any work when the run will not fit (:class:`runtime.preflight.PreflightError`). ``vae_batch``
    None (auto): when the default does not fit, the largest of :data:`VAE_BATCHES` that fits is chosen and named in
    the estimate's ``picked`` (``{"vae_batch": n}``; empty when the default fits); a value set by the caller is
    kept and only checked."""
    return fit(bundle, settings, conditions.frames_with_audio, conditions.clip_length, conditions, runtime, output,
               free, vae_batch, speed)


def fit(bundle, settings, frames: int, clip_length: int = 16, conditions=None, runtime=None, output: str = "frames",
        free: Optional[int] = None, vae_batch: Optional[int] = None, speed=None) -> pf.Estimate:
    """:func:`ensure` for ``frames`` frames (``conditions`` None: stand-ins of the right shapes)."""
    rt = runtime or bundle.runtime
    free = pf.free_bytes(rt, [h.module for h in bundle.sampling_models]) if free is None else free

    def for_batch(batch):
        return estimate(bundle, settings, frames, clip_length, conditions, rt, output, vae_batch=batch, speed=speed)

    est = for_batch(vae_batch)
    if vae_batch is not None or free is None or est.peak <= free:
        return pf.check(est, free, FIXES)
    batch, est = pf.largest_fitting([b for b in VAE_BATCHES if b < est.settings["vae_batch"]], for_batch, free,
                                    "vae_batch", FIXES)
    return replace(est, picked={"vae_batch": batch})       # a copy: the cached estimate stays as it was
