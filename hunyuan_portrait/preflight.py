"""HunyuanPortrait preflight: peak memory and time of a sampler run, from a trace of the real functions on fake
tensors (:mod:`runtime.preflight`), and the decode chunk that fits.

Two stages are traced with the sampling models' weights faked on the compute device:

* sampling (:func:`.animate._denoised`): the reference encoding, the sequence state on the host and the first
  windows of the first step (three guidance branches per window); the peak of a long run is reached there;
* decoding (:func:`.pipeline.decode`): the output buffer of the padded sequence and the first two chunks.

The frames handed out are one more copy of the unpadded video on the host (``animate``'s IMAGE), added to the
decode stage; with ``full_size`` (the paste-back's original frame size) the pasted frames too.
"""
from __future__ import annotations

from dataclasses import astuple, replace
from types import SimpleNamespace
from typing import Optional

import torch

from ..runtime import preflight as pf
from . import animate as A
from .pipeline import decode
from .sampler import window_starts

MODEL = "HunyuanPortrait"
DECODE_CHUNKS = (1, 2, 4, 8, 12, 16, 25, 32, 48, 64)
_CACHE: dict = {}


def _conditions(conditions, frames: int, size: int, make):
    if conditions is not None:
        return conditions
    return make(lambda: SimpleNamespace(num_frames=frames, size=size, motion=torch.zeros(frames, 64, 1024),
                                        appearance=torch.zeros(1, 64, 1024),
                                        source=SimpleNamespace(ref_img=torch.zeros(3, size, size))))


def _conditions_key(conditions, frames: int, size: int) -> tuple:
    """What of the conditions the trace reads: the motion and appearance tokens and the reference
    (:func:`runtime.preflight.shapes_key`; without conditions the stand-ins :func:`_conditions` makes)."""
    c = _conditions(conditions, frames, size, pf.on_meta)
    return pf.shapes_key(c.motion, c.appearance, c.source.ref_img)


def estimate(bundle, settings, frames: int, conditions=None, runtime=None, full_size: Optional[tuple] = None,
             traced_windows: int = 2, speed=None) -> pf.Estimate:
    """The estimate of :func:`.animate.animate` for ``frames`` driving frames (``conditions``: the real ones, when
    there are; otherwise stand-ins of the right shapes). ``full_size`` (H, W): also the pasted full frames.
    ``speed``: the run's Speed Options (``sdpa_math``'s score matrices are traced; see
    :func:`runtime.preflight.traced_speed`)."""
    rt = runtime or bundle.runtime
    device = torch.device(rt.device)
    key = (id(bundle.unet.module), astuple(settings), frames, str(device), full_size,
           _conditions_key(conditions, frames, settings.width), pf.speed_key(speed))
    if key in _CACHE:
        return _CACHE[key]
    started = __import__("time").perf_counter()
    s = settings
    resident = [h.module for h in bundle.sampling_models]
    padded = s.padded_length(frames)
    windows = len(window_starts(padded, s.n_sample_frames, s.overlap, 0))

    def sampling(trt, make):
        cond = _conditions(conditions, frames, s.width, make)
        with trt.progress(s.num_inference_steps * windows) as bar:
            return A._denoised(bundle, cond, s, 0, trt, bar, speed=pf.traced_speed(speed))

    sample_trace = pf.trace(sampling, resident, device, stop_after=min(traced_windows, windows * s.num_inference_steps))

    def decoding(trt, make):
        latents = make(lambda: torch.zeros(1, padded, 4, s.height // 8, s.width // 8))
        with trt.progress(padded) as bar:
            return decode(bundle.models(), latents, s, progress=bar.update)

    decode_trace = pf.trace(decoding, resident, device, stop_after=min(2 * s.decode_chunk_size, padded))
    out = frames * s.height * s.width * 3 * 4                                 # animate's (N, S, S, 3) copy
    if full_size is not None:
        out += frames * full_size[0] * full_size[1] * 3 * 4                   # pasted (N, H0, W0, 3)
    stages = {"sampling": sample_trace.device_peak(device), "decode": decode_trace.device_peak(device)}
    if device.type == "cpu":
        work, host = max(stages["sampling"], stages["decode"] + out), 0
    else:
        work = max(stages.values())
        host = max(sample_trace.device_peak("cpu"), decode_trace.device_peak("cpu") + out)
    done = sample_trace.work_for(windows * s.num_inference_steps) + decode_trace.work_for(padded)
    dtype = next(bundle.unet.module.parameters()).dtype
    est = pf.Estimate(
        model=MODEL, device=str(device), weights=pf.module_bytes(resident), work=work, host=host, flops=done.flops,
        seconds=pf.seconds(done, device, dtype), ops=done.ops,
        time_parts=done.breakdown(pf.rates(device, dtype)), stages=stages,
        settings={"frames": frames, "size": s.width, "steps": s.num_inference_steps, "window": s.n_sample_frames,
                  "overlap": s.overlap, "pad_frames": s.pad_frames, "decode_chunk": s.decode_chunk_size,
                  "dtype": str(dtype).replace("torch.", ""), **pf.speed_settings(speed)})
    est.trace_seconds = __import__("time").perf_counter() - started
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[key] = est
    return est


FIXES = ("a smaller 'window' (fewer frames per UNet call)", "a smaller 'decode_chunk' (0 picks the largest that "
         "fits)", "a smaller crop 'size' on the Driving Conditions node", "fp16 weights on the loader",
         "output 'video file' for long videos", "closing other programs or models that use the memory")


def ensure(bundle, conditions, settings, runtime=None, full_size=None, free: Optional[int] = None,
           speed=None) -> pf.Estimate:
    """Refuse before any work when the run will not fit (:class:`runtime.preflight.PreflightError`)."""
    rt = runtime or bundle.runtime
    est = estimate(bundle, settings, conditions.num_frames, conditions, rt, full_size=full_size, speed=speed)
    free = pf.free_bytes(rt, [h.module for h in bundle.sampling_models]) if free is None else free
    return pf.check(est, free, FIXES)


def auto_decode_chunk(bundle, frames: int, settings, conditions=None, runtime=None, full_size=None,
                      free: Optional[int] = None, speed=None):
    """The settings with the largest decode chunk (at most the padded length) that fits, and its estimate."""
    rt = runtime or bundle.runtime
    padded = settings.padded_length(frames)
    free = pf.free_bytes(rt, [h.module for h in bundle.sampling_models]) if free is None else free
    sizes = [c for c in DECODE_CHUNKS if c <= padded] or [1]
    chunk, est = pf.largest_fitting(
        sizes, lambda c: estimate(bundle, replace(settings, decode_chunk_size=c), frames, conditions, rt,
                                  full_size=full_size, speed=speed), free, "decode_chunk")
    return replace(settings, decode_chunk_size=chunk), est
