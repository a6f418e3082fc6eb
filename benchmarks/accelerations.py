"""Opt-in accelerations: speed-up and difference from the exact path, per option, on one configuration.

    python benchmarks/accelerations.py --family hunyuan_portrait                     # small nets, CPU, float32
    python benchmarks/accelerations.py --family hunyuan_portrait --size real --device cuda --frames 50 --steps 4
    python benchmarks/accelerations.py --options sdpa_math compile bf16 --json out.json
    python benchmarks/accelerations.py --family memo --frames 8 --options cache2 cache3 sdpa_math bf16

Each option runs the same generation as the exact path (same random weights, inputs and seed draws) and reports
``denoise s`` (min over ``--repeats`` rounds after one warm-up run, so compilation is not counted; the rounds run the
exact path and every option in turn, interleaved; the warm-up time is reported as ``first s``), the speed-up over
the exact path, and the difference of the decoded frames from the exact path's: PSNR over the whole clip, the worst
frame's PSNR, and the largest absolute difference (frames in [0, 1]).

Options: ``sdpa_math`` / ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` (SDPA restricted to one backend),
``sage`` (SageAttention, CUDA), ``compile`` (``torch.compile`` of the denoiser's blocks, default mode),
``compile_max`` (``max-autotune-no-cudagraphs``), ``cache2`` / ``cache3`` (feature reuse across steps every 2nd / 3rd
step, HelloMeme and MEMO), ``bf16`` / ``fp16`` (the denoiser in that dtype; the exact path is
``--dtype``, fp32 by default). Options that cannot run here (no CUDA, package missing) are listed with the reason.

The networks come from each family's benchmark script (``hunyuan_portrait.py``, ``hellomeme_video.py``,
``memo_clips.py``: random weights from the released or the parity configs), so the figures measure arithmetic and
kernels, not image quality; on a GPU use ``--size real``.
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


class MemoCase:
    """MEMO: clip-by-clip sampling + decode of ``frames`` frames (benchmarks/memo_clips.py's models: the parity
    stand-ins with ``--size small``, the released architectures with random weights with ``--size real``; its
    presets give the frame size, clip length, steps and guidance). The audio tokens are drawn at random (the audio
    models are not what the options change); ``denoise s`` sums, over the clips, the Reference Net pass and the
    Diffusion Net steps (not the VAE)."""

    name = "memo"

    def __init__(self, args):
        import torch

        import memo_clips as bench
        from portrait_animation.motion.memo_sampler import MemoSampler, MemoSamplerSettings
        from portrait_animation.runtime import parse_dtype

        preset = bench.PRESETS[args.size]
        dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")  # MEMO's own precision (fp16 overflows)
        self.bundle = bench.Bundle(args.size, args.device, dtype).bundle
        self.dtype = parse_dtype(dtype)
        self.steps = args.steps or preset.steps
        f = preset.clip_length
        clips = max(1, -(-args.frames // f))
        b = self.bundle
        self.sampler = MemoSampler(b.vae.module, b.reference_net.module, b.diffusion_net.module, b.image_proj.module,
                                   MemoSamplerSettings(steps=self.steps, guidance_scale=preset.cfg, frames_per_clip=f,
                                                       num_past_frames=f))
        b.runtime.load(b.sampling_models)
        gen = torch.Generator().manual_seed(0)
        width = b.diffusion_net.module.config.audio_attention_dim
        self.ref = torch.rand(1, 3, preset.image, preset.image, generator=gen) * 2 - 1
        self.face = torch.randn(1, 512, generator=gen)
        self.audio = torch.randn(1, clips * f, 32, width, generator=gen)
        self.emotions = torch.randint(0, 8, (clips * f,), generator=gen)
        self.frames = clips * f

    def denoiser(self):
        import torch

        # the dtype options cast the Reference Net too: the sampler feeds it in the Diffusion Net's dtype
        return torch.nn.ModuleList([self.bundle.diffusion_net.module, self.bundle.reference_net.module])

    def run(self, speed):
        import torch

        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        spans = []

        def inspect(name, _):
            if name.endswith(".ref_latents"):  # the clip's Reference Net pass and steps follow
                sync()
                spans.append([time.perf_counter()])

        def on_step(clip, step):
            if step == self.steps - 1:
                sync()
                spans[-1].append(time.perf_counter())

        with torch.no_grad():
            clips = self.sampler.clips(self.ref, self.face, self.audio, self.emotions, noise=0, inspect=inspect,
                                       on_step=on_step, speed=speed)
            frames = torch.cat([c.frames[0].transpose(0, 1) for c in clips])  # (N, 3, H, W)
        return sum(end - start for start, end in spans), frames.float()


CASES = {"hunyuan_portrait": HunyuanCase, "hellomeme": HelloMemeCase, "memo": MemoCase}


def run_once(case, option: str | None):
    """One generation with ``option`` (None: the exact path) -> (denoise seconds, frames); a dtype option casts the
    case's denoiser for the run only."""
    from portrait_animation.runtime import parse_dtype
    from portrait_animation.runtime.speed import SpeedOptions

    spec = dict(OPTIONS.get(option, {})) if option else {}
    dtype = spec.pop("dtype", None)
    if not dtype:
        return case.run(SpeedOptions(**spec))
    # the exact weights are kept (not cast back: a round trip through bf16 would change them for the next runs)
    unet = case.denoiser()
    params = [(p, p.detach()) for p in unet.parameters()]
    buffers = [(m, k, b) for m in unet.modules() for k, b in m._buffers.items() if b is not None]
    unet.to(parse_dtype(dtype))
    try:
        return case.run(SpeedOptions(**spec))
    finally:
        for p, data in params:
            p.data = data
        for m, k, b in buffers:
            m._buffers[k] = b


def measure(case, options: list[str], repeats: int) -> list[dict]:
    """The exact path and every option: one warm-up run each (``first_s``; compilation happens there), then
    ``repeats`` rounds that run them all in turn (interleaved, so a change in the machine's load hits every option
    alike); ``denoise_s`` is the minimum. An option that cannot run here is a row with ``skipped``."""
    import torch

    rows = []
    for option in [None, *options]:
        t0 = time.perf_counter()
        try:
            _, frames = run_once(case, option)
        except Exception as exc:  # an option this machine cannot run (no CUDA, package missing)
            if option is None:
                raise
            rows.append({"option": option, "skipped": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]})
            continue
        rows.append({"option": option or "exact", "first_s": time.perf_counter() - t0, "frames": frames, "times": []})
    for _ in range(repeats):
        for row in rows:
            if "skipped" in row:
                continue
            seconds, again = run_once(case, None if row["option"] == "exact" else row["option"])
            if not torch.equal(row["frames"], again):
                raise AssertionError(f"{row['option']}: two runs of the same option differ")
            row["times"].append(seconds)
    for row in rows:
        if "times" in row:
            row["denoise_s"] = min(row.pop("times"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(CASES), default="hunyuan_portrait")
    ap.add_argument("--size", choices=("small", "real"), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="the exact path's dtype (default fp32 on CPU, fp16 on CUDA; MEMO bf16)")
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
    rows = measure(case, args.options, max(1, args.repeats))
    exact = rows[0]
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
