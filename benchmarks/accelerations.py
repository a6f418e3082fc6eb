"""Opt-in accelerations: speed-up and difference from the exact path, per option, on one configuration.

    python benchmarks/accelerations.py --family hunyuan_portrait                     # small nets, CPU, float32
    python benchmarks/accelerations.py --family hunyuan_portrait --size real --device cuda --frames 50 --steps 4
    python benchmarks/accelerations.py --options sdpa_math compile bf16 --json out.json

Each option runs the same generation as the exact path (same random weights, inputs and seed draws) and reports
``denoise s`` (min over ``--repeats`` runs after one warm-up run, so compilation is not counted; the warm-up time is
reported as ``first s``), the speed-up over the exact path, and the difference of the decoded frames from the exact
path's: PSNR over the whole clip, the worst frame's PSNR, and the largest absolute difference (frames in [0, 1]).

Options: ``sdpa_math`` / ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` (SDPA restricted to one backend),
``sage`` (SageAttention, CUDA), ``compile`` (``torch.compile`` of the denoiser's blocks, default mode),
``compile_max`` (``max-autotune-no-cudagraphs``), ``cache2`` / ``cache3`` (feature reuse across steps every 2nd / 3rd
step, HelloMeme), ``bf16`` / ``fp16`` (the denoiser in that dtype; the exact path is
``--dtype``, fp32 by default). Options that cannot run here (no CUDA, package missing) are listed with the reason.

The networks come from ``benchmarks/hunyuan_portrait.py`` (random weights from the released or the parity configs),
so the figures measure arithmetic and kernels, not image quality; on a GPU use ``--size real``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import import_pack  # noqa: E402

OPTIONS = {
    "sdpa_math": {"attention": "sdpa_math"},
    "sdpa_flash": {"attention": "sdpa_flash"},
    "sdpa_efficient": {"attention": "sdpa_efficient"},
    "sdpa_cudnn": {"attention": "sdpa_cudnn"},
    "sage": {"attention": "sage"},
    "compile": {"compile": "default"},
    "compile_max": {"compile": "max-autotune-no-cudagraphs"},
    "cache2": {"cache_interval": 2},
    "cache3": {"cache_interval": 3},
    "bf16": {"dtype": "bf16"},
    "fp16": {"dtype": "fp16"},
}


def psnr(a, b) -> float:
    import torch

    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


class HunyuanCase:
    """HunyuanPortrait: denoise + decode of ``frames`` driving frames (benchmarks/hunyuan_portrait.py's models)."""

    name = "hunyuan_portrait"

    def __init__(self, args):
        import torch

        import hunyuan_portrait as bench
        from portrait_animation.hunyuan_portrait.pipeline import (PortraitSettings, appearance_tokens,
                                                                  initial_draws, padded_motion_tokens)
        from portrait_animation.runtime import parse_dtype

        preset = bench.PRESETS[args.size]
        self.settings = PortraitSettings(width=preset.image, height=preset.image,
                                         num_inference_steps=args.steps or preset.steps, pad_frames=preset.pad,
                                         n_sample_frames=preset.window, overlap=preset.overlap,
                                         shift_offset=preset.shift, decode_chunk_size=preset.decode_chunk)
        self.dtype = parse_dtype(args.dtype) or (torch.float16 if args.device == "cuda" else torch.float32)
        torch.manual_seed(0)
        self.models = bench.build_models(args.size, args.device, self.dtype)
        face, pose, landmarks = bench.driving_inputs(args.frames, preset.crop)
        self.ref, dino_image, ident = bench.source_inputs(preset.image)
        self.noise_aug, self.initial = initial_draws(self.settings, args.frames, torch.Generator().manual_seed(2))
        self.appearance = appearance_tokens(self.models, dino_image, ident)
        self.motion, _ = padded_motion_tokens(self.models, face, pose, landmarks, self.settings)
        self.frames, self.steps = args.frames, self.settings.num_inference_steps
        self.unet_calls = bench.count_calls(self.models.unet)

    def denoiser(self):
        return self.models.unet

    def run(self, speed):
        """-> (denoise seconds, decoded frames (N, 3, H, W) in [0, 1] on the host)."""
        import torch

        from portrait_animation.hunyuan_portrait.pipeline import decode, denoise

        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t0 = time.perf_counter()
        final = denoise(self.models, self.ref, self.appearance, self.motion, self.settings, self.noise_aug,
                        self.initial, speed=speed)
        sync()
        seconds = time.perf_counter() - t0
        video = decode(self.models, final, self.settings)  # (1, 3, N, H, W)
        return seconds, video[0].transpose(0, 1).float().cpu()


class HelloMemeCase:
    """HelloMeme v5 video: denoise + decode of ``frames`` driving frames (benchmarks/hellomeme_video.py's models: the
    parity stand-ins with ``--size small``, the released architecture with random weights with ``--size real``)."""

    name = "hellomeme"

    def __init__(self, args):
        import tempfile

        import torch

        import hellomeme_video as bench
        from portrait_animation.loaders.store import ModelStore
        from portrait_animation.runtime import StandaloneRuntime, parse_dtype
        from portrait_animation.sk_attention.loading import load_hellomeme
        from portrait_animation.sk_attention.pipeline_image import ComputedControls

        self.dtype = parse_dtype(args.dtype) or (torch.float16 if args.device == "cuda" else torch.float32)
        if args.size == "real":
            self.models, text_dim = bench._real_size_models(args.device, self.dtype)
            size = 512
        else:
            from helpers.tiny_models import write_hellomeme_models
            from parity.runner import parity_root

            self._tmp = tempfile.TemporaryDirectory()
            info = write_hellomeme_models(Path(self._tmp.name), parity_root())
            self.models = load_hellomeme("v5", video=True, store=ModelStore.at(self._tmp.name), dtype=self.dtype)
            text_dim, size = info["text_dim"], 128
        self.runtime = StandaloneRuntime(args.device, dtype=self.dtype, show_progress=False, keep_loaded=True)
        self.steps = args.steps or (25 if args.size == "real" else 6)
        gen = torch.Generator().manual_seed(0)
        emo = torch.randn(1, args.frames, 548, generator=gen)

        def condition(idx):
            g = torch.Generator().manual_seed(1000 + idx[0])
            return torch.rand(1, 3, len(idx), size, size, generator=g) * 2 - 1

        self.controls = lambda: ComputedControls(self.models.control_encoder, self.models.control_projector,
                                                 condition, emo_embedding=emo, num_frames=args.frames)
        self.prompt = torch.randn(1, 77, text_dim, generator=gen)
        self.negative = torch.randn(1, 77, text_dim, generator=gen)
        self.reference = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)

    def denoiser(self):
        return self.models.denoiser

    def run(self, speed):
        import torch

        from portrait_animation.sk_attention.pipeline_video import VideoGeneration

        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        marks = []
        job = VideoGeneration(self.models, self.runtime, self.reference, self.prompt, self.controls(),
                              negative_prompt_embeds=self.negative, steps=self.steps, guidance_scale=1.5, noise=0,
                              size_correct=True, speed=speed,
                              observer=lambda event, data: (sync(), marks.append(time.perf_counter()))
                              if event == "step" else None)
        t0 = time.perf_counter()
        with torch.no_grad():
            frames = torch.cat([image.float().cpu() for _, image in job])  # (N, H, W, 3)
        return marks[-1] - t0, frames.permute(0, 3, 1, 2)


CASES = {"hunyuan_portrait": HunyuanCase, "hellomeme": HelloMemeCase}


def measure(case, option: str | None, repeats: int) -> dict:
    import torch

    from portrait_animation.runtime.speed import SpeedOptions

    spec = dict(OPTIONS.get(option, {})) if option else {}
    dtype = spec.pop("dtype", None)
    speed = SpeedOptions(**spec)
    unet = case.denoiser()
    original_dtype = next(unet.parameters()).dtype
    if dtype:
        from portrait_animation.runtime import parse_dtype

        unet.to(parse_dtype(dtype))
    try:
        t0 = time.perf_counter()
        _, frames = case.run(speed)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            seconds, again = case.run(speed)
            times.append(seconds)
        if not torch.equal(frames, again):
            raise AssertionError(f"{option or 'exact'}: two runs of the same option differ")
    finally:
        unet.to(original_dtype)
    return {"option": option or "exact", "first_s": first, "denoise_s": min(times), "frames": frames}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(CASES), default="hunyuan_portrait")
    ap.add_argument("--size", choices=("small", "real"), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="the exact path's dtype (default fp32 on CPU, fp16 on CUDA)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--options", nargs="+", default=["sdpa_math", "compile", "bf16"], choices=sorted(OPTIONS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    import_pack()
    if args.threads:
        torch.set_num_threads(args.threads)
    case = CASES[args.family](args)
    exact = measure(case, None, args.repeats)
    rows = [exact]
    for option in args.options:
        try:
            rows.append(measure(case, option, args.repeats))
        except Exception as exc:  # an option this machine cannot run (no CUDA, package missing)
            rows.append({"option": option, "skipped": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]})
    print(f"\n{args.family}, {args.size} config, {args.frames} frames, {case.steps} steps, "
          f"{args.device}, exact dtype {case.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| option | first s | denoise s | speed-up | PSNR dB | worst frame dB | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    report = []
    for row in rows:
        if "skipped" in row:
            print(f"| {row['option']} | not run: {row['skipped']} | | | | | |")
            report.append(row)
            continue
        diff = (row["frames"] - exact["frames"]).abs()
        per_frame = [psnr(a, b) for a, b in zip(row["frames"], exact["frames"])]
        out = {"option": row["option"], "first_s": row["first_s"], "denoise_s": row["denoise_s"],
               "speedup": exact["denoise_s"] / row["denoise_s"], "psnr_db": psnr(row["frames"], exact["frames"]),
               "worst_frame_psnr_db": min(per_frame), "max_abs_diff": diff.max().item()}
        report.append(out)
        print(f"| {out['option']} | {out['first_s']:.2f} | {out['denoise_s']:.2f} | {out['speedup']:.2f}x | "
              f"{out['psnr_db']:.1f} | {out['worst_frame_psnr_db']:.1f} | {out['max_abs_diff']:.2e} |")
    if args.json:
        args.json.write_text(json.dumps({"family": args.family, "size": args.size, "device": args.device,
                                         "frames": args.frames, "rows": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
