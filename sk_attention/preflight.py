"""HelloMeme preflight: peak memory and time of an image or video run, from a trace of the real pipeline on fake
tensors (:mod:`runtime.preflight`).

An image run is traced whole with one denoising step. A video run is traced at one step with the first
:data:`TRACED_WINDOWS` windows of each pass (v1/v2 stage 1: the first frames) and the first two decode batches, so
the trace's cost does not grow with the video: the memory peak is the final pass's window (or the decode) on top of
what the run holds for the whole sequence, and that is all real in the trace: the whole-sequence tensors (base noise,
pass latents, prediction sums, keyframe latents, the final latents) are allocated by the run before its windows, and
the stores that later windows fill (control features per frame, keyframe pads) are filled to their final size (up to
their budgets) after the final pass's first window, from copies of an entry (see :func:`_video_run`). The memory of
a step does not depend on the number of steps; the time scales each traced phase to its real units (windows x
steps, frames) and the decode to every frame. Weights: every module of the version (denoiser, reference UNet, VAEs,
control nets), on the compute device. The node's output buffer (every frame, output ``frames``) is added on the host.
Estimates are kept per model and per input shapes (not per object), so a re-queue with the same inputs is not
traced again.

What the preflight may choose for a video run (:func:`ensure`), sizes that change its memory and not its frames: the
decode batch (frames per VAE decode call; each frame decodes as alone), then, on the CPU where they take the same
memory, the budgets of the control-feature store (``controls.cache``: features not kept are computed again from the
same driving frames) and of the keyframe-pad store (``pad_cache_bytes``: pads not kept are computed again from the
same keyframe latents). When the run does not fit with the defaults, the first step of :func:`size_ladder` that fits
is taken, for the sizes the caller left on auto. On a GPU both stores are on the host, so only the decode batch is
chosen. The window and the stride change the frames: only suggested in the refusal.
"""
from __future__ import annotations

import copy as _copy
import time
import weakref
from dataclasses import replace
from typing import Optional, Sequence

import torch

from ..runtime import preflight as pf
from .pipeline_image import _BoundedStore

AUTO_SIZES = ("decode_batch", "cache_bytes", "pad_cache_bytes")
DECODE_BATCHES = (4, 2, 1)              # below the default (pipeline_video.DEFAULT_DECODE_BATCH)
STORE_FRACTIONS = (0.5, 0.25, 0.125, 0.0)   # of the bytes the stores hold with their default budgets

MODEL = "HelloMeme"
_CACHE: dict = {}
TRACED_WINDOWS = 2  # windows traced per pass (video)
_ROLES = ("denoiser", "pre_denoiser", "reference_unet", "encode_vae", "decode_vae", "control_encoder",
          "control_projector", "arkit_control_encoder")


def modules(models) -> list[torch.nn.Module]:
    return [m for m in (getattr(models, r, None) for r in _ROLES) if isinstance(m, torch.nn.Module)]


def text_width(models) -> int:
    """The width of the text embeddings the UNet's cross-attention takes (768 for SD1.5)."""
    for name, m in models.denoiser.named_modules():
        if name.endswith("attn2.to_k") and isinstance(m, torch.nn.Linear):
            return m.in_features
    return 768


def estimate(models, controls, reference, video: bool = True, steps: int = 25, guidance_scale: float = 1.5,
             prompt=None, negative=None, runtime=None, output: str = "frames", traced_windows: int = TRACED_WINDOWS,
             **options) -> pf.Estimate:
    """The estimate of a HelloMeme run. ``controls``: the run's control source (its frame count is the video's;
    the trace runs on a copy with an empty feature cache, so ``controls`` keeps no fake features); ``reference``
    (H, W, 3); ``prompt``/``negative``: text embeddings (stand-ins of the UNet's text width when None);
    ``traced_windows``: windows traced per pass (video); ``options``: the other
    :class:`.pipeline_video.VideoGeneration` / ``generate_image`` options."""
    from .pipeline_image import generate_image

    rt = runtime
    device = torch.device(rt.device)
    frames = int(controls.num_frames) if video else 1
    speed = options.pop("speed", None)
    traced_speed = pf.traced_speed(speed)
    if traced_speed is not None:
        options["speed"] = traced_speed
    key = (id(models.denoiser), models.version, _signature(controls), frames, tuple(reference.shape),
           str(reference.dtype), video, steps, guidance_scale > 1.0, str(device), output, traced_windows,
           _signature(prompt), _signature(negative), tuple(sorted((k, str(v)) for k, v in options.items())))
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is models.denoiser:      # the id is still this model's (not a reused one)
        return hit[1]
    started = time.perf_counter()
    resident = modules(models)
    width = text_width(models)
    controls = _fresh(controls)
    if options.get("reference_controls") is not None:
        options["reference_controls"] = _fresh(options["reference_controls"])
    jobs: list = []
    deeps = _DeepTopUp()
    phases: list = []
    decoded = [frames]
    control_flops = [pf.Work()]

    def run(trt, make):
        pos = prompt if prompt is not None else make(lambda: torch.zeros(1, 77, width))
        neg = negative if negative is not None else make(lambda: torch.zeros(1, 77, width))
        if video:
            return _video_run(models, trt, reference, pos, neg, controls, guidance_scale, steps, traced_windows,
                              options, phases, decoded, control_flops, jobs, deeps)
        return generate_image(models, trt, reference, pos, controls, negative_prompt_embeds=neg, steps=1,
                              guidance_scale=guidance_scale, noise=0, **options)

    from . import pipeline_image, pipeline_video

    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    # a scheduler looks its step index up by value (``nonzero``: no shape on fake tensors); the trace runs one
    # step, so every lookup is of the first timestep: index 0
    lookups = [(cls, cls.__dict__["index_for_timestep"]) for cls in (EulerDiscreteScheduler, DPMSolverMultistepScheduler)
               if "index_for_timestep" in cls.__dict__]
    real_deep = pipeline_video.DeepFeature
    try:
        for cls, _ in lookups:
            cls.index_for_timestep = _first_index
        pipeline_video.DeepFeature = deeps.feature_class(real_deep)
        t = pf.trace(run, resident, device, real_calls=[(mod, name) for mod in (pipeline_video, pipeline_image)
                                                          for name in ("set_steps", "make_scheduler")])
    finally:
        pipeline_video.DeepFeature = real_deep
        for cls, real in lookups:
            cls.index_for_timestep = real
    if video and phases:
        # setup (reference encoding + cache) once; each phase scaled to its real units (a keyframe pass traced
        # without windows at the final pass's work per window); the control features of every frame; the decode of
        # every frame
        per_window = next(((end - begin) / traced for begin, end, traced, real in reversed(phases) if traced),
                          pf.Work())
        done = phases[0][0] + sum((end - begin) * real / traced if traced else per_window * real
                                  for begin, end, traced, real in phases)
        done += (t.work - phases[-1][1]) * frames / max(1, decoded[0]) + control_flops[0] * frames
    else:
        units = len(t.marks)
        first = t.marks[0] if t.marks else pf.Work()
        per_unit = (t.marks[-1] - first) / (units - 1) if units > 1 else first
        done = first + per_unit * (units * steps - 1) + (t.work - (t.marks[-1] if t.marks else pf.Work()))
    out = frames * reference.shape[-3] * reference.shape[-2] * 3 * 4 if (video and output == "frames") else 0
    peak = t.device_peak(device)
    if device.type == "cpu":
        work, host = peak + out, 0
    else:
        work, host = peak, t.device_peak("cpu") + out
    dtype = next(models.denoiser.parameters()).dtype
    sizes = {}
    if video and jobs:
        store = getattr(controls, "cache", None)
        sizes = {"decode_batch": int(jobs[0].decode_batch), "pad_cache_bytes": int(jobs[0].pad_cache_bytes),
                 "pad_cache_used": int(jobs[0].stats.pad_cache_peak_bytes)}
        if isinstance(store, _BoundedStore):
            sizes.update(cache_bytes=store.max_bytes, cache_used=int(store.peak_bytes))
    est = pf.Estimate(
        model=f"{MODEL} {models.version} {'video' if video else 'image'}", device=str(device),
        weights=pf.module_bytes(resident), work=work, host=host, flops=done.flops,
        seconds=pf.seconds(done, device, dtype), ops=done.ops,
        time_parts=done.breakdown(pf.rates(device, dtype)), stages={"run": peak},
        settings={"frames": frames, "size": f"{reference.shape[-2]}x{reference.shape[-3]}", "steps": steps,
                  "cfg": guidance_scale, "output": output if video else "image",
                  "dtype": str(dtype).replace("torch.", ""), **pf.speed_settings(speed)}, sizes=sizes)
    for name in ("decode_batch", "cache_bytes", "pad_cache_bytes"):
        if name in sizes:
            est.settings[name.replace("_bytes", "_mb")] = sizes[name] if name == "decode_batch" else round(
                sizes[name] / pf.MB, 1)
    est.trace_seconds = time.perf_counter() - started
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[key] = (weakref.ref(models.denoiser), est)
    return est


def _first_index(self, timestep, schedule_timesteps=None) -> int:
    return 0


def _fresh(controls, budget: Optional[int] = None):
    """A shallow copy of ``controls`` with an empty feature cache of the same budget, or of ``budget`` bytes (the
    trace fills it with fake tensors)."""
    store = getattr(controls, "cache", None)
    if not isinstance(store, _BoundedStore):
        return controls
    copy = _copy.copy(controls)
    copy.cache = _BoundedStore(store.max_bytes if budget is None else int(budget), store.device)
    if hasattr(copy, "_negative"):
        copy._negative = None
    return copy


def _fill(store: "_BoundedStore", keys, skip=()) -> None:
    """Put a copy of one stored entry under every key of ``keys`` not stored and not in ``skip``, until the budget is
    full (fill-until-full, as the run does: every entry has the same size)."""
    if not store.items:
        return
    sample = next(iter(store.items.values()))
    for key in keys:
        if key in skip or store.get(key) is not None:
            continue
        if not store.put(key, sample):
            return


def _video_run(models, trt, reference, pos, neg, controls, guidance_scale, steps, traced, options, phases, decoded,
               control_flops, jobs, deeps: "_DeepTopUp"):
    """The video run at one step, with the first ``traced`` windows of each pass (of v1/v2 stage 1: the first
    ``traced`` frames), then the decode of the first two batches. What grows with the length is still real:
    the whole-sequence tensors are allocated by the run itself (base noise, pass latents, prediction sums, keyframe
    latents, final latents); the feature stores that the skipped windows would fill (control features per frame,
    keyframe pads) are filled after the final pass's first window with copies of a stored entry, up to their
    budgets, so its next window runs with the stores as full as at the run's last window.
    Keyframe passes before the final one run without windows (their whole-pass tensors are allocated; their
    stores and windows are smaller than the final pass's). The control network runs once (traced); the features of
    later frames are new tensors of the same shapes (``control_flops``: the work of one frame). With feature reuse
    (Speed Options ``cache_interval``), the deep features that the untraced windows of a pass would store are held
    beside the traced ones from the pass's first store to its end (``deeps``).
    ``phases`` gets (flops at start, at end, traced units, real units) per phase; ``decoded`` the frames decoded."""
    from .pipeline_video import PRE_PASS_MAX_STEPS, FixedWindows, PassPlan, VideoGeneration

    traced = max(2, int(traced))
    job = VideoGeneration(models, trt, reference, pos, controls, negative_prompt_embeds=neg, steps=1,
                          guidance_scale=guidance_scale, noise=0, **options)
    jobs.append(job)
    n_frames = job.num_frames
    plan = list(job.plan)
    store = getattr(controls, "cache", None)
    store = store if isinstance(store, _BoundedStore) else None

    def flops():
        return trt.counter.total() if trt.counter is not None else pf.Work()

    def phase(traced_units, real_units, call, untraced_windows: int = 0):
        begin = flops()
        deeps.pending = untraced_windows
        try:
            return call()
        finally:
            deeps.release()
            phases.append((begin, flops(), traced_units, real_units))

    if store is not None and hasattr(controls, "_run"):
        real_control, shapes = controls._run, {}

        def control_run(condition, expression, device, dtype):
            key = (str(device), dtype, tuple(condition.shape))
            if key not in shapes:
                begin = flops()
                out = real_control(condition, expression, device, dtype)
                control_flops[0] = max(control_flops[0], flops() - begin)
                shapes[key] = {k: (v.shape, v.dtype, v.device) for k, v in out.items()}
                return out
            return {k: torch.empty(shape, dtype=dt, device=where) for k, (shape, dt, where) in shapes[key].items()}
        controls._run = control_run

    real_end_frames, real_pass, real_stage1, real_stage2 = job._end_frames, job._run_pass, job._stage1, job._stage2

    def end_frames(*args, **kwargs):
        return phase(1, steps, lambda: real_end_frames(*args, **kwargs))

    def run_pass(k, p, base_noise, denoiser, rows, cache, pads, motion_pads, guided, progress, *rest, **kwargs):
        final = k == len(plan) - 1
        short = PassPlan(p.depth, p.frames, p.windows[:traced] if final else [])
        bar = progress
        if final and len(p.windows) > 1:
            pending = short.windows[1:]               # the traced windows after the first
            skip_frames = {p.frames[i] for w in pending for i in w}
            ends = [(p.frames[w[0]], p.frames[w[-1]]) for w in p.windows]
            keyframes = dict.fromkeys(f for a, b in ends if pads.has(a) and pads.has(b) for f in (a, b))
            skip_ends = {f for w in pending for f in (p.frames[w[0]], p.frames[w[-1]])}

            def fill():
                if store is not None:
                    _fill(store, range(n_frames), skip_frames)
                _fill(pads.cache, keyframes, skip_ends)
            bar = _AfterFirst(progress, fill)
        return phase(len(short.windows), steps * len(p.windows),
                     lambda: real_pass(k, short, base_noise, denoiser, rows, cache, pads, motion_pads, guided, bar,
                                       *rest, **kwargs), len(p.windows) - len(short.windows))

    def stage1(*args, **kwargs):
        # every frame alone: the first frames only, then the whole output and the control store of every frame
        count = min(traced, n_frames)
        pre_steps = min(PRE_PASS_MAX_STEPS, steps)
        job.num_frames = count
        try:
            out = phase(count, n_frames * pre_steps, lambda: real_stage1(*args, **kwargs))
        finally:
            job.num_frames = n_frames
        full = torch.empty((*out.shape[:2], n_frames, *out.shape[3:]), dtype=out.dtype, device=out.device)
        del out
        if store is not None:
            _fill(store, range(n_frames))
        return full

    def stage2(*args, **kwargs):
        fixed = job.fixed
        job.fixed = FixedWindows(fixed.frames, fixed.windows[:traced], fixed.overlap)
        try:
            return phase(len(job.fixed.windows), steps * len(fixed.windows), lambda: real_stage2(*args, **kwargs),
                         len(fixed.windows) - len(job.fixed.windows))
        finally:
            job.fixed = fixed

    job._end_frames, job._run_pass, job._stage1, job._stage2 = end_frames, run_pass, stage1, stage2

    def frames():
        # the first two decode batches: the second is decoded while the first's images are still held
        k = max(1, int(job.decode_batch))
        last = min(k, n_frames - 1)
        it = iter(job)
        try:
            for index, image in it:
                if index >= last:
                    break
                yield index
        finally:
            it.close()
        decoded[0] = min(n_frames, 2 * k) if n_frames > k else n_frames
        yield last
    return frames()


class _DeepTopUp:
    """The deep features of a pass's untraced windows (feature reuse): at the pass's first store, ``pending``
    copies of the stored tensors are made (on the store's device, counted by the trace) and held until the pass
    ends, as the real run holds one per window from its first step on."""

    def __init__(self):
        self.pending = 0
        self.held: list = []

    def release(self) -> None:
        self.pending, self.held = 0, []

    def feature_class(self, base):
        owner = self

        class TracedDeepFeature(base):
            def store(self, *tensors):
                super().store(*tensors)
                if owner.pending > 0:
                    owner.held.extend(tuple(t.clone() for t in self.tensors if t is not None)
                                      for _ in range(owner.pending))
                    owner.pending = 0
        return TracedDeepFeature


class _AfterFirst:
    """A progress reporter that calls ``then()`` once, after the first unit."""

    def __init__(self, progress, then):
        self.progress, self.then, self.done = progress, then, False

    def update(self, n: int = 1, preview=None) -> None:
        self.progress.update(n, preview)
        if not self.done:
            self.done = True
            self.then()

    def __getattr__(self, name):
        return getattr(self.progress, name)


def _signature(obj, depth: int = 0):
    """What of a control source the estimate depends on (shapes, dtypes, budgets, classes; never values nor ids of
    short-lived objects): a re-queue with equal inputs hits the cache, a new object at a freed id cannot."""
    if torch.is_tensor(obj):
        return ("T", tuple(obj.shape), str(obj.dtype), obj.device.type)
    if isinstance(obj, _BoundedStore):
        return ("store", obj.max_bytes, obj.device.type)
    if isinstance(obj, torch.nn.Module):
        return ("module", type(obj).__name__, id(obj))        # the models' own modules (kept by the models)
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if isinstance(obj, dict) and depth < 3:
        return tuple(sorted((str(k), _signature(v, depth + 1)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)) and depth < 3:
        return tuple(_signature(v, depth + 1) for v in obj)
    if callable(obj) and hasattr(obj, "__code__"):         # a function (pose images made on demand): its code and
        cells = tuple(c.cell_contents for c in (obj.__closure__ or ()))          # what it captured
        return ("function", id(obj.__code__), _signature(cells, depth + 1))
    if hasattr(obj, "__dict__") and depth < 3:
        state = {k: v for k, v in vars(obj).items() if k not in ("cache", "_negative") or isinstance(v, _BoundedStore)}
        return (type(obj).__name__, _signature(state, depth + 1))
    return ("object", type(obj).__name__)


FIXES = ("a smaller width/height", "fp16 or bf16 on HelloMeme Loader", "output 'video file' for long videos",
         "fewer driving frames (driving_fps)", "closing other programs or models that use the memory")


def size_ladder(est: pf.Estimate, device: torch.device | str, auto: Sequence[str] = AUTO_SIZES) -> list[dict]:
    """The sizes to try when the defaults (``est``) do not fit, in increasing order of memory: every step smaller
    than the next. First the decode batch down to 1 (free: the same work in smaller calls), then (CPU only) both
    stores cut to :data:`STORE_FRACTIONS` of what they hold with their defaults (each cut adds the work of computing
    the features again). Only the sizes named in ``auto`` change."""
    sizes = est.sizes
    if not sizes:
        return []
    base = {k: sizes[k] for k in AUTO_SIZES if k in sizes}
    steps = []
    if "decode_batch" in auto:
        steps += [dict(base, decode_batch=b) for b in DECODE_BATCHES if b < base["decode_batch"]]
    if torch.device(device).type == "cpu":
        last = steps[-1] if steps else dict(base)
        for fraction in STORE_FRACTIONS:
            step = dict(last)
            if "cache_bytes" in auto and "cache_bytes" in base:
                step["cache_bytes"] = min(base["cache_bytes"], int(sizes["cache_used"] * fraction))
            if "pad_cache_bytes" in auto:
                step["pad_cache_bytes"] = min(base["pad_cache_bytes"], int(sizes["pad_cache_used"] * fraction))
            if step != (steps[-1] if steps else base):
                steps.append(step)
    return steps[::-1]


def ensure(models, controls, reference, runtime, video: bool = True, free: Optional[int] = None,
           auto: Sequence[str] = AUTO_SIZES, **kwargs) -> pf.Estimate:
    """Refuse before any work when the run will not fit (:class:`runtime.preflight.PreflightError`). A video run that
    does not fit with the defaults gets the first step of :func:`size_ladder` that fits (sizes in ``auto`` and not
    given in ``kwargs``), named in the estimate's ``picked`` (``decode_batch``, ``cache_bytes`` (the control store's
    budget: set it on ``controls.cache.max_bytes``), ``pad_cache_bytes``); empty when the defaults fit."""
    est = estimate(models, controls, reference, video=video, runtime=runtime, **kwargs)
    free = pf.free_bytes(runtime, modules(models)) if free is None else free
    auto = [k for k in auto if k not in kwargs]
    ladder = size_ladder(est, runtime.device, auto) if video and free is not None and est.peak > free else []
    if not ladder:
        return pf.check(est, free, FIXES)

    def for_sizes(sizes: dict) -> pf.Estimate:
        options = dict(kwargs, decode_batch=sizes["decode_batch"], pad_cache_bytes=sizes["pad_cache_bytes"])
        return estimate(models, _fresh(controls, sizes.get("cache_bytes")), reference, video=True, runtime=runtime,
                        **options)

    sizes, est = pf.largest_fitting(ladder, for_sizes, free, "the smallest sizes:", FIXES)
    return replace(est, picked={k: sizes[k] for k in auto if k in sizes})


def apply_picked(est: Optional[pf.Estimate], controls, options: dict) -> None:
    """Put the sizes the preflight chose (``est.picked``) into a run's ``controls`` and video ``options``."""
    picked = est.picked if est is not None else {}
    if "cache_bytes" in picked and isinstance(getattr(controls, "cache", None), _BoundedStore):
        controls.cache.max_bytes = int(picked["cache_bytes"])
    for name in ("decode_batch", "pad_cache_bytes"):
        if name in picked:
            options[name] = picked[name]
