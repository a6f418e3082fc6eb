"""HunyuanPortrait: seconds per frame and peak memory against the number of driving frames.

    python benchmarks/hunyuan_portrait.py --size small --frames 50 400                  # small nets, CPU, float32
    python benchmarks/hunyuan_portrait.py --size real --device cuda --frames 50 750     # released sizes, fp16, GPU
    python benchmarks/hunyuan_portrait.py --size small --frames 50 400 --json out.json  # also write the rows
    python benchmarks/hunyuan_portrait.py --original ~/originals/HunyuanPortrait    # + the original's UNet step

What runs: every network is built from its config with random weights (nothing is downloaded or read), then the
pack's own path of :func:`hunyuan_portrait.pipeline.generate`, phase by phase: appearance tokens once (DINOv2 +
IMAdapter, image projector), motion tokens for N random driving crops / landmarks (expression, head pose, refiner;
faded padding to F = N + 2 pad), ``denoise`` with the sequence state on the host (its default) and ``decode``
(chunked temporal VAE, frames to the host). Each length runs in a fresh process, so peaks do not mix.

``--size real``: the released configs (SVD-xt UNet with the motion IP K/V, SVD-xt temporal VAE, DINOv2 ViT-L/14 +
IMAdapters, image projector, pose guider, ResNet-50-GN expression encoder, ResNet-18-GN head pose, motion refiner) at
512x512 with the official settings (25 steps, window 25, overlap 3, shift 3, pad 15, decode chunk 8, 256 px motion
crops), the image networks in ``--dtype`` (auto: fp16 on CUDA) and the motion nets in float32, as the official
inference. On the CPU it works but is very slow. ``--size small``: the tiny UNet and temporal VAE of the parity case
``hunyuan_portrait/e2e_inference`` (UNet block_out_channels (320, 320), one layer per block; VAE widths 32-64), a
2-block DINOv2 of the real width (1024, the UNet's context width), the real pose guider and the real-size motion nets
on 64 px crops, at 64x64, 3 steps, window 8, overlap 2, pad 4, float32. The figures show the pipeline's scaling, not
the released model's quality (random weights). ``--steps``, ``--window``, ... override the preset. The official
settings at 750 frames mean F = 780, 36 windows per step, 900 UNet calls on 75 frames of 64x64 latents each.

Columns: ``padded`` = F; ``windows/step`` = ceil(F / (window - overlap)); ``UNet calls`` counted by a forward hook
(one window, three guidance branches, one step each); ``build s`` = building the random networks (no file I/O);
``motion s`` = appearance + motion tokens; ``s/frame`` = (denoise + decode) wall time / N; ``GPU ... MB`` =
``torch.cuda.max_memory_allocated`` per phase (motion tokens, denoise, decode), reset at each phase, and the weights
resident after building (CUDA only); ``host peak MB`` = the process's RSS high-water mark (whole run, building
included); ``host +MB`` = the RSS high-water mark during generation above the RSS right after building (the mark is
reset through ``/proc/self/clear_refs`` at each phase; the JSON has it per phase as ``host_<phase>_mb``; the driving
inputs are allocated after the baseline, see ``inputs MB``); ``state MB`` = the tensors the pipeline keeps per frame
(padded motion tokens, final latents, decoded video), wherever they are. glibc may keep freed blocks in the heap
(see benchmarks/hellomeme_video.py); ``--mmap-threshold 131072`` makes the RSS follow live memory.
On a CPU that other processes also use, ``--threads 1`` avoids OpenMP oversubscription (on 2 busy cores, 2 threads
ran the small UNet about 7x slower than 1); the load average is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish_report, import_pack, run_isolated  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# presets and configs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Preset:
    image: int                # square image side
    steps: int
    window: int               # n_sample_frames (also the intensity-id chunk)
    overlap: int
    shift: int
    pad: int
    decode_chunk: int
    crop: int                 # side of the driving crops fed to the motion nets


PRESETS = {
    "real": Preset(image=512, steps=25, window=25, overlap=3, shift=3, pad=15, decode_chunk=8, crop=256),
    "small": Preset(image=64, steps=3, window=8, overlap=2, shift=3, pad=4, decode_chunk=4, crop=64),
}

# parity case hunyuan_portrait/e2e_inference, files/unet/config.json and files/vae/config.json
SMALL_UNET = dict(down_block_types=["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
                  up_block_types=["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
                  block_out_channels=[320, 320], layers_per_block=1, num_attention_heads=[5, 5],
                  cross_attention_dim=1024)
SMALL_VAE = dict(block_out_channels=[32, 32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 4, force_upcast=True,
                 in_channels=3, latent_channels=4, layers_per_block=1, out_channels=3, sample_size=64,
                 scaling_factor=0.18215)
SMALL_DINO = dict(depth=2, adapter_blocks=(1,))  # real width 1024 = the UNet's context width


def windows_per_step(padded: int, window: int, overlap: int) -> int:
    """The sampler's rule: windows start every ``window - overlap`` frames while the start is below F."""
    return math.ceil(padded / (window - overlap))


# ---------------------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """RSS high-water mark since the last :func:`reset_peak_rss` (VmHWM), else since the start (ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class GpuPeaks:
    """``torch.cuda.max_memory_allocated`` per phase (None everywhere off CUDA)."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated_mb(self) -> float | None:
        return self.torch.cuda.memory_allocated() / 2**20 if self.cuda else None

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() / 2**20


class Phases:
    """Wall time, accelerator peak and host RSS high-water mark above ``host_base`` of each phase of one run:
    ``with phases("denoise"): ...``. Resetting the kernel's mark also resets ``ru_maxrss``, so the whole-process
    peak is kept here (``whole_peak_mb``)."""

    def __init__(self, gpu: GpuPeaks, host_base: float):
        self.gpu, self.host_base = gpu, host_base
        self.seconds, self.gpu_mb, self.host_mb = {}, {}, {}
        self.whole_peak_mb, self.reset_ok = peak_rss_mb(), True

    @contextmanager
    def __call__(self, name: str):
        self.gpu.start()
        self.whole_peak_mb = max(self.whole_peak_mb, peak_rss_mb())
        self.reset_ok &= reset_peak_rss()
        t0 = time.perf_counter()
        yield
        self.gpu.sync()
        self.seconds[name] = time.perf_counter() - t0
        self.gpu_mb[name] = self.gpu.peak_mb()
        peak = peak_rss_mb()
        self.host_mb[name] = peak - self.host_base
        self.whole_peak_mb = max(self.whole_peak_mb, peak)


# ---------------------------------------------------------------------------------------------------------------------
# models and inputs
# ---------------------------------------------------------------------------------------------------------------------
def build_models(size: str, device: str, dtype):
    """Every network of :class:`PortraitModels` with random weights, built on ``device``; the image networks in
    ``dtype``, the motion nets in float32 (as the official inference)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    from portrait_animation.hunyuan_portrait import scheduler as hp_scheduler
    from portrait_animation.hunyuan_portrait.dino import DinoConfig, DinoV2IdEncoder
    from portrait_animation.hunyuan_portrait.image_proj import ImageProjector
    from portrait_animation.hunyuan_portrait.pipeline import PortraitModels
    from portrait_animation.hunyuan_portrait.pose_guider import PoseGuider
    from portrait_animation.hunyuan_portrait.unet import PortraitUNet, UNetConfig, unet_config
    from portrait_animation.loaders.checkpoint import embedded_config, strip_config
    from portrait_animation.motion.hunyuan.expression import ExpressionEncoder
    from portrait_animation.motion.hunyuan.head_pose import HeadPoseNet
    from portrait_animation.motion.hunyuan.refiner import IntensityAwareMotionRefiner

    def build(factory, module_dtype=dtype):  # one module at a time, so the float32 transient is one module's
        torch.manual_seed(0)
        with torch.device(device):
            module = factory()
        if next(module.parameters()).dtype != module_dtype:
            module = module.to(dtype=module_dtype)
        return module.eval().requires_grad_(False)

    real = size == "real"
    unet_cfg = unet_config(None) if real else UNetConfig.from_dict(SMALL_UNET)
    vae_cfg = strip_config(embedded_config("svd_xt_vae")) if real else SMALL_VAE
    dino_cfg = DinoConfig() if real else DinoConfig(**SMALL_DINO)
    return PortraitModels(
        unet=build(lambda: PortraitUNet(unet_cfg)),
        vae=build(lambda: AutoencoderKLTemporalDecoder.from_config(vae_cfg)),
        scheduler_config=hp_scheduler.scheduler_config(None),
        dino=build(lambda: DinoV2IdEncoder(dino_cfg)),
        image_proj=build(ImageProjector),
        pose_guider=build(PoseGuider),
        expression=build(ExpressionEncoder, torch.float32),
        head_pose=build(HeadPoseNet, torch.float32),
        refiner=build(IntensityAwareMotionRefiner, torch.float32))


def driving_inputs(frames: int, crop: int, seed: int = 0):
    """Random driving crops (N, 3, M, M) in [0, 1] (expression and head pose) and 5-point landmarks (N, 5, 2) of a
    face that drifts and jitters in a 512-pixel frame (so the intensity ids vary by chunk)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    face = torch.rand(frames, 3, crop, crop, generator=g)
    pose = torch.rand(frames, 3, crop, crop, generator=g)
    rng = np.random.default_rng(seed)
    template = np.array([[200, 220], [312, 220], [256, 280], [215, 340], [297, 340]], dtype=np.float64)
    drift = np.cumsum(rng.normal(0, 1.5, (frames, 1, 2)), axis=0)
    landmarks = template + drift + rng.normal(0, 2.0, (frames, 5, 2))
    return face, pose, landmarks


def source_inputs(size: int, seed: int = 0):
    """Random source crop (1, 3, H, W) in [-1, 1], DINO input (1, 3, 224, 224) and an L2-normalised ID (1, 512)."""
    import numpy as np
    import torch

    from portrait_animation.hunyuan_portrait.pipeline import identity_embedding

    g = torch.Generator().manual_seed(seed + 1)
    ref = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    dino_image = torch.randn(1, 3, 224, 224, generator=g)
    ident = identity_embedding(np.random.default_rng(seed + 1).normal(size=(1, 512)).astype(np.float32))
    return ref, dino_image, ident


def count_calls(module) -> list[int]:
    """A counter of ``module``'s forward calls (a forward hook)."""
    counter = [0]

    def hook(*_):
        counter[0] += 1

    module.register_forward_hook(hook)
    return counter


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------------------------------
# one measurement (runs in a fresh process)
# ---------------------------------------------------------------------------------------------------------------------
def measure(args) -> dict:
    """Build the models, then time and measure one generation of ``args.frames`` driving frames."""
    import gc

    import torch

    import_pack()
    from portrait_animation.hunyuan_portrait.pipeline import (PortraitSettings, appearance_tokens, decode, denoise,
                                                              initial_draws, padded_motion_tokens)
    from portrait_animation.runtime import parse_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, parse_dtype(args.dtype)
    settings = PortraitSettings(width=args.image, height=args.image, num_inference_steps=args.steps,
                                pad_frames=args.pad, n_sample_frames=args.window, overlap=args.overlap,
                                shift_offset=args.shift, decode_chunk_size=args.decode_chunk)
    gpu = GpuPeaks(device)

    t0 = time.perf_counter()
    models = build_models(args.size, device, dtype)
    gpu.sync()
    build_s = time.perf_counter() - t0
    calls = count_calls(models.unet)
    gc.collect()
    gpu_weights = gpu.allocated_mb()
    host_base = rss_mb()

    n = args.frames
    face, pose, landmarks = driving_inputs(n, args.crop)
    ref, dino_image, ident = source_inputs(args.image)
    noise_aug, initial_noise = initial_draws(settings, n, torch.Generator().manual_seed(2))
    inputs_mb = nbytes(face, pose, noise_aug, initial_noise) / 2**20 + landmarks.nbytes / 2**20

    phase = Phases(gpu, host_base)
    # the order and the references of pipeline.generate
    with phase("motion"):
        appearance = appearance_tokens(models, dino_image, ident)                      # (1, 64, 1024)
        motion, _ids = padded_motion_tokens(models, face, pose, landmarks, settings)   # (1, F, 64, 1024)
    with phase("denoise"):
        final = denoise(models, ref, appearance, motion, settings, noise_aug, initial_noise)  # (1, F, 4, h, w) host
    with phase("decode"):
        video = decode(models, final, settings)                                        # (1, 3, N, H, W), host

    padded = settings.padded_length(n)
    assert video.shape[2] == n and final.shape[1] == padded and motion.shape[1] == padded
    gpu_peaks = [p for p in phase.gpu_mb.values() if p is not None]
    row = {"frames": n, "padded_frames": padded,
           "windows_per_step": windows_per_step(padded, args.window, args.overlap), "unet_calls": calls[0],
           "steps": args.steps, "build_s": build_s, "motion_s": phase.seconds["motion"],
           "denoise_s": phase.seconds["denoise"], "decode_s": phase.seconds["decode"],
           "s_per_frame": (phase.seconds["denoise"] + phase.seconds["decode"]) / n,
           "gpu_weights_mb": gpu_weights, "peak_gpu_mb": max(gpu_peaks) if gpu_peaks else None,
           "peak_host_mb": phase.whole_peak_mb, "host_base_mb": host_base,
           "host_increase_mb": max(phase.host_mb.values()), "host_peak_reset": phase.reset_ok,
           "state_mb": nbytes(motion, final, video) / 2**20, "inputs_mb": inputs_mb,
           "motion_device": str(motion.device), "video_shape": list(video.shape), "threads": torch.get_num_threads()}
    for name in phase.seconds:
        row[f"gpu_{name}_mb"], row[f"host_{name}_mb"] = phase.gpu_mb[name], phase.host_mb[name]
    return row


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------
def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other processes on the CPUs make CPU timings noisy)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(device: str) -> dict:
    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "device": device,
            "load_average_start": load_average()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = [("frames", "frames", "d"), ("padded", "padded_frames", "d"), ("windows/step", "windows_per_step", "d"),
           ("UNet calls", "unet_calls", "d"), ("build s", "build_s", ".1f"), ("motion s", "motion_s", ".2f"),
           ("s/frame", "s_per_frame", ".3f"), ("GPU weights MB", "gpu_weights_mb", ".0f"),
           ("GPU motion MB", "gpu_motion_mb", ".0f"), ("GPU denoise MB", "gpu_denoise_mb", ".0f"),
           ("GPU decode MB", "gpu_decode_mb", ".0f"), ("host peak MB", "peak_host_mb", ".0f"),
           ("host +MB", "host_increase_mb", ".0f"), ("state MB", "state_mb", ".1f"), ("inputs MB", "inputs_mb", ".1f")]


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} CPUs)"
    lines = [f"HunyuanPortrait generation, `--size {s['size']}` (random weights) on {m['device']}: {where}; "
             f"torch {m['torch']}, diffusers {m['diffusers']}",
             f"{s['image']}x{s['image']}, {s['steps']} steps, window {s['window']}, overlap {s['overlap']}, "
             f"shift {s['shift']}, pad {s['pad']}, decode chunk {s['decode_chunk']}, dtype {s['dtype']}, "
             f"{report['rows'][0]['threads']} CPU threads; motion: "
             f"real-size expression / head-pose / refiner nets (float32) on random {s['crop']}x{s['crop']} crops "
             f"and landmarks",
             f"command: `{report['command']}`; load average (1/5/15 min) {m['load_average_start']} at the start, "
             f"{m['load_average_end']} at the end", "",
             "| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    for r in report["rows"]:
        lines.append("| " + " | ".join(_cell(r[key], fmt) for _, key, fmt in COLUMNS) + " |")
    if not all(r["host_peak_reset"] for r in report["rows"]):
        lines.append("\n(host +MB: /proc/self/clear_refs was not allowed; measured from the whole-run peak)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------------
def resolve(args) -> None:
    """Fill the preset's values for the options left out, the device and the dtype."""
    import torch

    preset = PRESETS[args.size]
    for name, value in asdict(preset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        args.dtype = "fp16" if torch.device(args.device).type == "cuda" else "fp32"
    if args.frames is None:
        args.frames = [50, 750] if args.size == "real" else [50, 400]


def child_args(args, frames: int) -> list[str]:
    out = ["--frames", str(frames), "--size", args.size, "--device", args.device, "--dtype", args.dtype,
           "--threads", str(args.threads)]
    for key in ("image", "steps", "window", "overlap", "shift", "pad", "decode_chunk", "crop"):
        out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=sorted(PRESETS), default="small")
    ap.add_argument("--frames", type=int, nargs="+", help="driving-frame counts (default: 50 400 small, 50 750 real)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="auto", help="image networks: auto (fp16 on CUDA, fp32 on the CPU), fp32, "
                                                    "fp16, bf16; the motion nets stay float32")
    ap.add_argument("--image", type=int, help="square image side (multiple of 8); preset: 512 real, 64 small")
    for name in ("steps", "window", "overlap", "shift", "pad", "decode-chunk", "crop"):
        ap.add_argument(f"--{name}", type=int, help="override the preset's value")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for the runs in bytes (0: the allocator's dynamic default)")
    ap.add_argument("--json", type=Path, help="also write the settings, machine and rows here")
    ap.add_argument("--original", type=Path, help="the original's source tree: also time the denoiser step side by "
                                                  "side (benchmarks/_originals.py)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        args.frames = args.frames[0]
        print(json.dumps(measure(args)))
        return 0
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(
        ["python", __file__, *argv])
    resolve(args)
    if args.size == "real" and args.device == "cpu":
        warnings.warn("--size real on the CPU: the released networks (a 1.5 B-parameter UNet, 25 steps) will take "
                      "a very long time; it works, but consider --steps 1 or a GPU", stacklevel=1)
    if args.mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)  # inherited by the fresh processes
    info = machine(args.device)
    rows = [run_isolated(Path(__file__), child_args(args, n)) for n in args.frames]
    info["load_average_end"] = load_average()
    settings = {k: getattr(args, k) for k in ("size", "device", "dtype", "image", "steps", "window", "overlap",
                                              "shift", "pad", "decode_chunk", "crop", "threads", "mmap_threshold")}
    report = {"command": command, "machine": info, "settings": settings, "rows": rows}
    print(markdown(report))
    finish_report("hunyuan_portrait", args, report, threads=args.threads or 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
