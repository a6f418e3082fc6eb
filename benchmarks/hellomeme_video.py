"""HelloMeme v5 video: seconds per denoising step and per output frame, peak memory against the clip length.

    python benchmarks/hellomeme_video.py --frames 24 96                          # stand-in models on the CPU
    python benchmarks/hellomeme_video.py --frames 24 96 --device cuda            # same models on a GPU
    python benchmarks/hellomeme_video.py --frames 24 96 --device cuda --real-size --dtype fp16
                                                                                 # real v5 sizes, random weights
    python benchmarks/hellomeme_video.py --frames 24 96 --json out.json --original ~/originals/HelloMeme
                                                                                 # + the original's denoiser step

Each frame count runs in a fresh process (peak memory is per run). The stand-in models (default) are the tiny
HelloMeme set of tests/helpers/tiny_models.py (released layout, reduced widths), loaded from a models folder through
the pack's loaders, so the figures show the pipeline's scaling, not the real model's speed. ``--real-size`` builds
the released v5 architecture (SD1.5 UNet x2, VAE, hm5_reference, hm5_motion, hm5_control_base, hm5_control_proj) with
random weights directly on the device and casts it to ``--dtype`` (meant for a GPU; default size 512).

Driving inputs are synthetic and produced per window (pose images from a callable, PD-FGC codes (1, F, 548)), so the
inputs themselves do not grow the footprint; decoded frames are consumed and dropped as they stream out, as a video
writer would. With that, peak host / GPU memory must stay flat as the frame count grows.

Host memory on the CPU: glibc's dynamic mmap threshold keeps freed large blocks in the heap, so the RSS high-water mark
also holds fragmentation that grows with the number of windows until it saturates (e.g. 256x256: +80 MB from 24 to 96
frames, +5 MB more to 192). ``--mmap-threshold 131072`` fixes the threshold (``MALLOC_MMAP_THRESHOLD_``) so the peak
follows live memory: then it grows only by the latent-sized per-frame state (about 12 latent frames per video frame).
Use it for memory figures only: every large tensor then is a fresh mmap, which slows the run (decoding most).

Columns: ``UNet calls`` = denoising-UNet calls (one window of <= 12 frames, CFG batch, one step), ``s/call`` = denoising
seconds per call (the per-step cost of a window), ``s/frame`` = whole run (reference, all passes, decoding) per output
frame, ``decode s/frame`` = decoding per frame, peak host MB (process RSS high-water mark), peak GPU MB (allocator);
the JSON rows also carry ``load_s`` (loading or building the networks). ``--original TREE``: the v5 video denoiser
step of the pack and of the original (HM3Denoising3D + HM5 adapters from the source tree) on the parity case's
config, checked equal within its tolerance and timed interleaved (see benchmarks/_originals.py).
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


def _real_size_models(device: str, dtype):
    """The released v5 video architecture with random weights, built on ``device`` module by module and cast to
    ``dtype`` (so the fp32 transient is one module at a time)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from portrait_animation.loaders.checkpoint import embedded_config, strip_config
    from portrait_animation.sk_attention.adapters import MotionAdapter, ReferenceAdapter
    from portrait_animation.sk_attention.control import ControlEncoder, ControlProjector
    from portrait_animation.sk_attention.denoiser import SKDenoiser
    from portrait_animation.sk_attention.pipeline_image import HelloMemeModels

    def build(factory):
        torch.manual_seed(0)
        with torch.device(device):
            module = factory()
        return module.to(dtype=dtype).eval().requires_grad_(False)

    unet_cfg, vae_cfg = strip_config(embedded_config("sd15_unet")), strip_config(embedded_config("sd15_vae"))
    unet = build(lambda: UNet2DConditionModel.from_config(unet_cfg))
    ref_unet = build(lambda: UNet2DConditionModel.from_config(unet_cfg))
    vae = build(lambda: AutoencoderKL.from_config(vae_cfg))
    models = HelloMemeModels(
        version="v5", denoiser=SKDenoiser(unet, build(ReferenceAdapter), build(MotionAdapter)).eval(),
        reference_unet=SKDenoiser(ref_unet).eval(), encode_vae=vae, decode_vae=vae,
        control_encoder=build(ControlEncoder), control_projector=build(ControlProjector), dtype=dtype)
    return models, int(unet_cfg["cross_attention_dim"])


def child(args) -> dict:
    import torch

    import_pack()
    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.runtime import StandaloneRuntime, parse_dtype
    from portrait_animation.sk_attention.loading import load_hellomeme
    from portrait_animation.sk_attention.pipeline_image import ComputedControls
    from portrait_animation.sk_attention.pipeline_video import VideoGeneration

    torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype)
    cuda = torch.device(args.device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        t_load = time.perf_counter()
        if args.real_size:
            models, text_dim = _real_size_models(args.device, dtype or torch.float16)
            size = args.size or 512
        else:
            from helpers.tiny_models import write_hellomeme_models
            from parity.runner import parity_root

            info = write_hellomeme_models(Path(tmp), parity_root())
            models = load_hellomeme("v5", video=True, store=ModelStore.at(tmp), dtype=dtype)
            text_dim, size = info["text_dim"], args.size or info["image_size"]
        load_s = time.perf_counter() - t_load
        if size % 64:
            raise SystemExit(f"--size must be a multiple of 64 (the control network's U-Net), got {size}")
        rt = StandaloneRuntime(args.device, dtype=dtype, show_progress=False, keep_loaded=args.keep_loaded)

        frames = args.frames
        gen = torch.Generator().manual_seed(0)
        emo = torch.randn(1, frames, 548, generator=gen)

        def condition(idx):  # pose images of these frames only, (1, 3, f, size, size) in [-1, 1]
            g = torch.Generator().manual_seed(1000 + idx[0])
            return torch.rand(1, 3, len(idx), size, size, generator=g) * 2 - 1

        controls = ComputedControls(models.control_encoder, models.control_projector, condition, emo_embedding=emo,
                                    num_frames=frames, cache_bytes=int(args.control_cache_mb * 2**20))
        prompt, negative = torch.randn(1, 77, text_dim, generator=gen), torch.randn(1, 77, text_dim, generator=gen)
        reference = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)

        last_step = [0.0]

        def observer(event, data):
            if event == "step":
                if cuda:
                    torch.cuda.synchronize()
                last_step[0] = time.perf_counter()

        job = VideoGeneration(models, rt, reference, prompt, controls, negative_prompt_embeds=negative,
                              steps=args.steps, guidance_scale=args.cfg, noise=0, size_correct=True,
                              observer=observer)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        host_before = peak_host_mb()
        produced = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            for _index, image in job:
                produced += image.shape[0]  # consumed and dropped, as a streaming writer would
                del image
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        denoise = last_step[0] - t0
    return {"frames": produced, "size": size, "steps": args.steps, "unet_calls": job.stats.unet_calls,
            "passes": job.stats.passes, "seconds": seconds, "s_per_call": denoise / job.stats.unet_calls,
            "s_per_frame": seconds / produced, "decode_s_per_frame": (seconds - denoise) / produced,
            "peak_host_mb": peak_host_mb(), "host_before_sampling_mb": host_before, "peak_gpu_mb": peak_gpu_mb(),
            "state_mb": job.stats.state_bytes / 2**20, "real_size": bool(args.real_size), "load_s": load_s,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, nargs="+", default=[24, 96])
    ap.add_argument("--size", type=int, default=0, help="square image side (multiple of 64); 0: 128 for the "
                                                        "stand-ins, 512 with --real-size")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on the CPU, fp16/bf16 on a GPU), fp32, fp16, bf16")
    ap.add_argument("--real-size", action="store_true", help="released v5 architecture, random weights")
    ap.add_argument("--keep-loaded", action="store_true", help="keep every model on the device (no offloading)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--control-cache-mb", type=float, default=2048,
                    help="host store for the per-frame control features (the pipeline's default, 2048; 0: recompute "
                         "them for every window and step, the original's cost)")
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for the runs in bytes (0: the allocator's dynamic default)")
    ap.add_argument("--json", type=Path, help="also write the settings and rows here")
    ap.add_argument("--original", type=Path, help="the original's source tree: also time the denoiser step side by "
                                                  "side (benchmarks/_originals.py)")
    args = ap.parse_args(argv)
    if args.child:
        args.frames = args.frames[0]
        print(json.dumps(child(args)))
        return 0
    if args.mmap_threshold:
        import os

        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)  # inherited by the fresh processes
    rows = []
    for n in args.frames:
        child_args = ["--frames", str(n), "--size", str(args.size), "--steps", str(args.steps), "--cfg", str(args.cfg),
                      "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
        child_args += ["--real-size"] * args.real_size + ["--keep-loaded"] * args.keep_loaded
        child_args += ["--control-cache-mb", str(args.control_cache_mb)]
        rows.append(run_isolated(Path(__file__), child_args))
    r0 = rows[0]
    print(f"HelloMeme v5 video ({'real size, random weights' if r0['real_size'] else 'stand-in models'}) on "
          f"{args.device}, dtype {args.dtype}, {r0['size']}x{r0['size']}, {args.steps} steps, cfg {args.cfg:g}"
          + (f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else ""))
    print(f"{'frames':>6} {'UNet calls':>10} {'s/call':>7} {'s/frame':>8} {'decode s/frame':>14} "
          f"{'peak host MB':>12} {'host MB before':>14} {'peak GPU MB':>11}")
    for r in rows:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(f"{r['frames']:>6} {r['unet_calls']:>10} {r['s_per_call']:>7.3f} {r['s_per_frame']:>8.3f} "
              f"{r['decode_s_per_frame']:>14.4f} {r['peak_host_mb']:>12.0f} {r['host_before_sampling_mb']:>14.0f} "
              f"{gpu:>11}")
    settings = {k: getattr(args, k) for k in ("size", "steps", "cfg", "device", "dtype", "real_size", "threads")}
    settings["size"] = r0["size"]
    finish_report("hellomeme", args, {"family": "hellomeme", "settings": settings, "rows": rows, "comparison": None},
                  threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
