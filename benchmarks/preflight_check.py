"""Preflight estimate vs measured peak and time, per family.

    python benchmarks/preflight_check.py --device cuda                       # released sizes, random weights
    python benchmarks/preflight_check.py --device cpu --size small --frames 8 --steps 1
    python benchmarks/preflight_check.py --device cpu --threads 1      # steadier times on a shared CPU

For each family the script builds the models of ``benchmarks/accelerations.py`` (``--size real``: the released
architectures with random weights; ``small``: the parity stand-ins), asks the family's preflight for the estimate
(a trace on fake tensors), then runs the same sampler for real twice: once timed, with nothing watching it (the
estimate's ``seconds`` predicts it), once with its peak measured: ``torch.cuda.max_memory_allocated`` on a GPU
(weights + run, what the estimate's ``peak`` predicts), live tensor bytes on the CPU (weights + everything the run
allocates). It prints one line per family (the time ratio x = estimate / measured) and a JSON list with ``--json``
(with the time model's parts and the measured rates); the exit status is 1 when a memory estimate is off by more
than 15%. The time is a run's alone: on a CPU that other programs share, use ``--threads 1`` for steadier figures
(with two threads a busy machine makes every parallel operation wait for a core).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import import_pack  # noqa: E402

import_pack()


def measure(device, run):
    """(peak bytes, seconds) of ``run()``: its wall time alone, then CUDA's allocator peak or live CPU tensor bytes
    (+ weights: added by the caller) of a second run."""
    seconds = timed(device, run)
    return peak_of(device, run), seconds


def timed(device, run):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_of(device, run):
    import torch

    from portrait_animation.runtime.preflight import LiveBytes

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.no_grad():
            run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    meter = LiveBytes()
    with torch.no_grad(), meter:
        run()
    return meter.peak.get("cpu", 0)


def hunyuan(args):
    import torch

    from accelerations import HunyuanCase
    from portrait_animation.hunyuan_portrait import animate as A
    from portrait_animation.hunyuan_portrait import preflight as P
    from portrait_animation.runtime import StandaloneRuntime
    from portrait_animation.runtime.base import ModelHandle

    case = HunyuanCase(args)
    rt = StandaloneRuntime(args.device, show_progress=False, keep_loaded=True)
    m = case.models
    handles = [ModelHandle(n, getattr(m, n), case.dtype) for n in ("unet", "vae", "pose_guider")]
    bundle = SimpleNamespace(runtime=rt, unet=handles[0], sampling_models=handles, models=lambda: m)
    cond = SimpleNamespace(num_frames=case.frames, size=case.settings.width, motion=case.motion[0, case.settings.
                           pad_frames:case.motion.shape[1] - case.settings.pad_frames].cpu(),
                           appearance=case.appearance, source=SimpleNamespace(ref_img=case.ref[0]))
    t0 = time.perf_counter()
    est = P.estimate(bundle, case.settings, case.frames, cond, rt)
    took = time.perf_counter() - t0
    peak, seconds = measure(args.device, lambda: A.animate(bundle, cond, case.settings, 0, runtime=rt))
    return est, peak, seconds, took, [h.module for h in handles]


def memo(args):
    import torch

    import memo_clips as bench
    from portrait_animation.memo import preflight as P
    from portrait_animation.memo.pipeline import MemoSettings, talking_frames

    preset = bench.PRESETS[args.size]
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    bundle = bench.Bundle(args.size, args.device, dtype).bundle
    rt = bundle.runtime
    s = MemoSettings(steps=args.steps or preset.steps, guidance_scale=preset.cfg, num_past_frames=preset.clip_length,
                     width=preset.image, height=preset.image)
    f = preset.clip_length
    t0 = time.perf_counter()
    est = P.estimate(bundle, s, args.frames, f, runtime=rt, output="video file")
    took = time.perf_counter() - t0
    cond = P.stand_in_conditions(bundle, args.frames, f, lambda make: make())
    cond.audio_emb = torch.randn(cond.audio_emb.shape, generator=torch.Generator().manual_seed(0))
    ref = torch.rand(1, preset.image, preset.image, 3)
    peak, seconds = measure(args.device, lambda: [None for _ in talking_frames(bundle, ref, cond,
                                                                               torch.zeros(1, 512), s)])
    return est, peak, seconds, took, [h.module for h in bundle.sampling_models]


def hellomeme(args):
    from accelerations import HelloMemeCase
    from portrait_animation.sk_attention import preflight as P
    from portrait_animation.sk_attention.pipeline_video import generate_video

    case = HelloMemeCase(args)
    t0 = time.perf_counter()
    est = P.estimate(case.models, case.controls(), case.reference, video=True, steps=case.steps,
                     prompt=case.prompt, negative=case.negative, runtime=case.runtime, output="video file",
                     size_correct=True)
    took = time.perf_counter() - t0
    peak, seconds = measure(args.device, lambda: generate_video(
        case.models, case.runtime, case.reference, case.prompt, case.controls(), negative_prompt_embeds=case.negative,
        steps=case.steps, guidance_scale=1.5, noise=0, size_correct=True))
    return est, peak, seconds, took, P.modules(case.models)


def est_dtype(est):
    import torch

    return getattr(torch, est.settings.get("dtype", "float32"))


FAMILIES = {"hunyuan_portrait": hunyuan, "memo": memo, "hellomeme": hellomeme}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--size", choices=("small", "real"), default=None, help="default: real on cuda, small on cpu")
    ap.add_argument("--family", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    ap.add_argument("--frames", type=int, default=None, help="default: 50 on cuda, 8 on cpu")
    ap.add_argument("--steps", type=int, default=None, help="default: the family's preset (1 on cpu)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.size = args.size or ("real" if args.device == "cuda" else "small")
    args.frames = args.frames or (50 if args.device == "cuda" else 8)
    if args.device == "cpu" and args.steps is None:
        args.steps = 1
    from portrait_animation.runtime.preflight import MB, module_bytes, rates

    rows = []
    for name in args.family:
        est, peak, seconds, took, resident = FAMILIES[name](args)
        if args.device == "cpu":
            peak += module_bytes(resident)          # the live-bytes meter sees only what the run allocates
        row = {"family": name, "device": args.device, "size": args.size, "frames": args.frames,
               "estimate_mb": round(est.peak / MB, 1), "measured_mb": round(peak / MB, 1),
               "error": round(est.peak / peak - 1, 4), "estimate_s": round(est.seconds, 1),
               "measured_s": round(seconds, 1), "trace_s": round(took, 1), "settings": est.settings}
        row.update(time_ratio=round(est.seconds / seconds, 2), ops=round(est.ops),
                   time_parts={k: round(v, 2) for k, v in est.time_parts.items()},
                   rates=rates(args.device, est_dtype(est)).to_dict())
        rows.append(row)
        print(f"{name:17s} estimate {row['estimate_mb']:9.1f} MB  measured {row['measured_mb']:9.1f} MB  "
              f"({100 * row['error']:+.1f}%)  time estimate {row['estimate_s']} s, measured {row['measured_s']} s "
              f"(x{row['time_ratio']}), trace {row['trace_s']} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(abs(r["error"]) <= 0.15 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
