"""MEMO: seconds per output frame and peak memory against the number of clips (memory must stay flat).

    python benchmarks/memo_clips.py --clips 1 4 16                 # small stand-in models on the CPU
    python benchmarks/memo_clips.py --clips 1 4 16 --device cuda   # same models on a GPU

Each clip count runs in a fresh process (peak memory is per run). Frames are consumed as they stream out of the
sampler, as a video writer would; the stand-in networks have the released layout with tiny widths (see
tests/helpers/tiny_models.py), so the figures show the pipeline's scaling, not the real model's speed (there is no real-size MEMO preset yet).
``--json`` writes the rows (with ``load_s``, loading the networks); ``--original TREE`` also times the Diffusion Net
step of the pack beside the original's (memo.models.unet_3d from the source tree) on the parity case's config,
checked equal within its tolerance first (see benchmarks/_originals.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish_report, import_pack, peak_gpu_mb, peak_host_mb, run_isolated  # noqa: E402


def child(args) -> dict:
    import torch

    import_pack()
    from helpers.tiny_models import write_memo_models
    from parity.runner import DEFAULT_PARITY_ROOT
    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.memo.pipeline import MemoSettings, condition, load_memo_bundle, talking_frames
    from portrait_animation.runtime import StandaloneRuntime

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_memo_models(Path(tmp), DEFAULT_PARITY_ROOT)
        rt = StandaloneRuntime(args.device, show_progress=False)
        t_load = time.perf_counter()
        bundle = load_memo_bundle(rt, ModelStore.at(tmp), dtype=args.dtype, emotion_model=False, identity=False)
        load_s = time.perf_counter() - t_load
        clip = args.clip_length
        frames = args.clips * clip
        sr = 16000
        audio = {"waveform": 0.1 * torch.randn(1, 1, int(frames / args.fps * sr) - sr // args.fps // 2),
                 "sample_rate": sr}
        cond = condition(bundle, audio, fps=args.fps, clip_length=clip, emotion="neutral")
        settings = MemoSettings(steps=args.steps, num_past_frames=clip, width=args.size, height=args.size)
        host_before = peak_host_mb()
        t0 = time.perf_counter()
        produced = 0
        for batch in talking_frames(bundle, torch.rand(1, args.size, args.size, 3), cond, torch.zeros(512), settings):
            produced += batch.shape[0]  # consumed and dropped, as a streaming writer would
        seconds = time.perf_counter() - t0
    return {"clips": args.clips, "frames": produced, "s_per_frame": seconds / produced,
            "s_per_step": seconds / (args.clips * args.steps), "peak_host_mb": peak_host_mb(),
            "host_before_sampling_mb": host_before, "peak_gpu_mb": peak_gpu_mb(), "load_s": load_s,
            "steps": args.steps, "size": args.size, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clips", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--clip-length", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the settings and rows here")
    ap.add_argument("--original", type=Path, help="the original's source tree: also time the denoiser step side by "
                                                  "side (benchmarks/_originals.py)")
    args = ap.parse_args(argv)
    if args.child:
        args.clips = args.clips[0]
        print(json.dumps(child(args)))
        return 0
    rows = []
    for n in args.clips:
        rows.append(run_isolated(Path(__file__), ["--clips", str(n), "--device", args.device, "--dtype", args.dtype,
                                                  "--steps", str(args.steps), "--clip-length", str(args.clip_length),
                                                  "--size", str(args.size), "--fps", str(args.fps),
                                                  "--threads", str(args.threads)]))
    print(f"MEMO (stand-in models) on {args.device}, {args.size}x{args.size}, {args.steps} steps, "
          f"{args.clip_length} frames per clip")
    print(f"{'clips':>5} {'frames':>6} {'s/frame':>8} {'s/step':>7} {'peak host MB':>12} {'peak GPU MB':>11}")
    for r in rows:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(f"{r['clips']:>5} {r['frames']:>6} {r['s_per_frame']:>8.3f} {r['s_per_step']:>7.3f} "
              f"{r['peak_host_mb']:>12.0f} {gpu:>11}")
    settings = {k: getattr(args, k) for k in ("size", "steps", "clip_length", "fps", "device", "dtype", "threads")}
    finish_report("memo", args, {"family": "memo", "settings": settings, "rows": rows, "comparison": None},
                  threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
