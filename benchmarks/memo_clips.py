"""MEMO: seconds per output frame and peak memory against the number of clips (memory must stay flat).

    python benchmarks/memo_clips.py --clips 1 4 16                           # small stand-in models on the CPU
    python benchmarks/memo_clips.py --clips 1 16 --size real --device cuda   # released sizes, random weights, GPU
    python benchmarks/memo_clips.py --size real --check                      # build the real size on 'meta' only

Each clip count runs in a fresh process (peak memory is per run). Frames are consumed as they stream out of the
sampler, as a video writer would. ``--size small`` (default): the parity stand-ins, the released layout with tiny
widths (see tests/helpers/tiny_models.py), loaded through the model store, so the figures show the pipeline's
scaling, not the real model's speed. ``--size real``: the released architectures (Reference Net and Diffusion Net
from the released configs, which are the config classes' defaults; sd-vae-ft-mse, wav2vec2-base-960h, image_proj,
audio_proj) with random weights, built on the device; 512x512, 16 frames and 16 past frames per clip, 20 steps,
guidance 3.5 and bf16 as the original's ``configs/inference.yaml`` (the reference_net has the released file's
857,066,560 parameters). ``--check`` builds the chosen size on the meta device and prints the parameter counts and
the shapes of one step (no weights, no arithmetic). ``--json`` writes the rows (with ``load_s``, loading or building
the networks); ``--original TREE`` also times the Diffusion Net step of the pack beside the original's
(memo.models.unet_3d from the source tree) on the parity case's config, checked equal within its tolerance first
(see benchmarks/_originals.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import finish_report, import_pack, peak_gpu_mb, peak_host_mb, run_isolated  # noqa: E402


@dataclass(frozen=True)
class Preset:
    image: int  # frame side in pixels
    clip_length: int  # frames per clip (= past frames)
    steps: int
    cfg: float
    dtype: str


PRESETS = {
    "small": Preset(image=128, clip_length=4, steps=2, cfg=3.5, dtype="fp32"),
    "real": Preset(image=512, clip_length=16, steps=20, cfg=3.5, dtype="bf16"),  # the original's inference.yaml
}


def real_modules(device, dtype) -> dict:
    """The released MEMO architectures with random weights, built on ``device`` one by one and cast to ``dtype``
    (the audio models stay fp32, as the loader keeps them): {name: module}."""
    import torch
    from diffusers import AutoencoderKL

    from portrait_animation.audio.wav2vec import (EMBEDDED_CONFIG, EMBEDDED_PREPROCESSOR, Wav2Vec2Config,
                                                  Wav2Vec2Encoder)
    from portrait_animation.loaders.checkpoint import embedded_config, strip_config
    from portrait_animation.memo.diffusion_net import DiffusionNet, DiffusionNetConfig
    from portrait_animation.memo.projections import AudioProj, ImageProj
    from portrait_animation.memo.reference_net import ReferenceNet, ReferenceNetConfig

    def build(factory, dt):
        torch.manual_seed(0)
        with torch.device(device):
            module = factory()
        return module.to(dtype=dt).eval().requires_grad_(False)

    w2v = Wav2Vec2Config.from_dict(embedded_config(EMBEDDED_CONFIG), embedded_config(EMBEDDED_PREPROCESSOR))
    vae_cfg = strip_config(embedded_config("sd15_vae"))  # sd-vae-ft-mse has the SD1.5 VAE architecture
    return {"vae": build(lambda: AutoencoderKL.from_config(vae_cfg), dtype),
            "reference_net": build(lambda: ReferenceNet(ReferenceNetConfig()), dtype),
            "diffusion_net": build(lambda: DiffusionNet(DiffusionNetConfig()), dtype),
            "image_proj": build(ImageProj, dtype),
            "audio_proj": build(AudioProj, torch.float32),
            "wav2vec": build(lambda: Wav2Vec2Encoder(w2v), torch.float32)}


class Bundle:
    """A MEMO bundle for ``size`` on ``device`` (``.bundle``; ``.load_s``: seconds to load or build it)."""

    def __init__(self, size: str, device: str, dtype: str):
        import torch

        from portrait_animation.memo.pipeline import MemoBundle, load_memo_bundle
        from portrait_animation.runtime import StandaloneRuntime, parse_dtype

        t0 = time.perf_counter()
        if size == "real":
            dt = parse_dtype(dtype) or torch.bfloat16
            rt = StandaloneRuntime(device, offload_device=device, show_progress=False)  # built where it runs
            modules = real_modules(rt.device, dt)
            handles = {name: rt.manage(f"memo.{name}", m, next(m.parameters()).dtype) for name, m in modules.items()}
            self.bundle = MemoBundle(runtime=rt, dtype=dt, **handles)
        else:
            from helpers.tiny_models import write_memo_models
            from parity.runner import DEFAULT_PARITY_ROOT
            from portrait_animation.loaders.store import ModelStore

            self._tmp = tempfile.TemporaryDirectory()
            write_memo_models(Path(self._tmp.name), DEFAULT_PARITY_ROOT)
            self.bundle = load_memo_bundle(StandaloneRuntime(device, show_progress=False),
                                           ModelStore.at(self._tmp.name), dtype=dtype, emotion_model=False,
                                           identity=False)
        self.load_s = time.perf_counter() - t0


def check(args) -> dict:
    """Build ``--size`` on the meta device (no memory, no weights): parameter counts per network, and the shapes of
    one CFG step at the preset's size (Reference Net on ``[reference, past frames]`` x 2, a full Diffusion Net call
    that updates the memory, and a feature-reuse call)."""
    import torch

    from portrait_animation.runtime.speed import DeepFeature

    meta = torch.device("meta")
    m = real_modules(meta, torch.float32) if args.size == "real" else {
        k: getattr(Bundle("small", "cpu", "fp32").bundle, k).module.to(meta)
        for k in ("vae", "reference_net", "diffusion_net", "image_proj", "audio_proj", "wav2vec")}
    net, f, h = m["diffusion_net"], args.clip_length, args.image // 8
    tokens = torch.empty(2, 4, net.config.cross_attention_dim, device=meta)
    deep = DeepFeature(meta)
    with torch.no_grad():
        features = m["reference_net"](torch.empty(2 * (1 + f), 4, h, h, device=meta), 0.0, tokens)
        call = dict(ref_features=features, timestep=torch.tensor(1000.0, device=meta), encoder_hidden_states=tokens,
                    audio_embedding=torch.empty(2, f, 32, net.config.audio_attention_dim, device=meta),
                    audio_emotion=torch.tensor([9, 3], device=meta),
                    uc_mask=torch.cat([torch.ones(f), torch.zeros(f)]).bool(), deep=deep)
        full = net(torch.empty(2, 4, f, h, h, device=meta), is_new_audio=True, update_past_memory=True, **call)
        deep.reuse = True
        reused = net(torch.empty(2, 4, f, h, h, device=meta), is_new_audio=False, **call)
    return {"parameters": {name: sum(p.numel() for p in mod.parameters()) for name, mod in m.items()},
            "step_output": list(full.shape), "reuse_output": list(reused.shape),
            "deep_feature": [list(t.shape) for t in deep.tensors]}


def child(args) -> dict:
    import torch

    import_pack()
    from portrait_animation.memo.pipeline import MemoSettings, condition, talking_frames

    torch.set_num_threads(args.threads)
    built = Bundle(args.size, args.device, args.dtype)
    bundle = built.bundle
    clip = args.clip_length
    frames = args.clips * clip
    sr = 16000
    audio = {"waveform": 0.1 * torch.randn(1, 1, int(frames / args.fps * sr) - sr // args.fps // 2),
             "sample_rate": sr}
    cond = condition(bundle, audio, fps=args.fps, clip_length=clip, emotion="neutral")
    settings = MemoSettings(steps=args.steps, guidance_scale=args.cfg, num_past_frames=clip, width=args.image,
                            height=args.image)
    host_before = peak_host_mb()
    t0 = time.perf_counter()
    produced = 0
    for batch in talking_frames(bundle, torch.rand(1, args.image, args.image, 3), cond, torch.zeros(512), settings):
        produced += batch.shape[0]  # consumed and dropped, as a streaming writer would
    seconds = time.perf_counter() - t0
    return {"clips": args.clips, "frames": produced, "s_per_frame": seconds / produced,
            "s_per_step": seconds / (args.clips * args.steps), "peak_host_mb": peak_host_mb(),
            "host_before_sampling_mb": host_before, "peak_gpu_mb": peak_gpu_mb(), "load_s": built.load_s,
            "steps": args.steps, "size": args.image, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clips", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--size", choices=sorted(PRESETS), default="small",
                    help="small: the parity stand-ins; real: the released architectures with random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: the preset's (fp32 small, bf16 real)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--clip-length", type=int, default=None, help="frames per clip (and past frames)")
    ap.add_argument("--image", type=int, default=None, help="frame side in pixels (default 128 small, 512 real)")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="build on the meta device, print parameter counts, stop")
    ap.add_argument("--json", type=Path, help="also write the settings and rows here")
    ap.add_argument("--original", type=Path, help="the original's source tree: also time the denoiser step side by "
                                                  "side (benchmarks/_originals.py)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.size]
    for name in ("image", "clip_length", "steps", "cfg", "dtype"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    if args.check:
        import_pack()
        print(json.dumps({"size": args.size, "image": args.image, "clip_length": args.clip_length, **check(args)}))
        return 0
    if args.child:
        args.clips = args.clips[0]
        print(json.dumps(child(args)))
        return 0
    rows = []
    for n in args.clips:
        rows.append(run_isolated(Path(__file__), [
            "--clips", str(n), "--size", args.size, "--device", args.device, "--dtype", args.dtype,
            "--steps", str(args.steps), "--cfg", str(args.cfg), "--clip-length", str(args.clip_length),
            "--image", str(args.image), "--fps", str(args.fps), "--threads", str(args.threads)]))
    kind = "released sizes, random weights" if args.size == "real" else "stand-in models"
    print(f"MEMO ({kind}) on {args.device}, {args.dtype}, {args.image}x{args.image}, {args.steps} steps, "
          f"cfg {args.cfg:g}, {args.clip_length} frames per clip")
    print(f"{'clips':>5} {'frames':>6} {'s/frame':>8} {'s/step':>7} {'peak host MB':>12} {'peak GPU MB':>11}")
    for r in rows:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(f"{r['clips']:>5} {r['frames']:>6} {r['s_per_frame']:>8.3f} {r['s_per_step']:>7.3f} "
              f"{r['peak_host_mb']:>12.0f} {gpu:>11}")
    settings = {k: getattr(args, k) for k in ("size", "image", "steps", "cfg", "clip_length", "fps", "device",
                                              "dtype", "threads")}
    finish_report("memo", args, {"family": "memo", "settings": settings, "rows": rows, "comparison": None},
                  threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
