"""HelloMeme preflight: peak memory and time of an image or video run, from a trace of the real pipeline on fake
tensors (:mod:`runtime.preflight`).

The trace runs :func:`.pipeline_video.generate_video` (or :func:`.pipeline_image.generate_image`) whole with one
denoising step: the reference encoding and reference-UNet pass, every window of every keyframe pass (the CFG batch,
the control features, the keyframe pads), the decode of every frame. The memory of a step does not depend on the
number of steps; the time scales the traced work per UNet call to the requested steps. Weights: every module of the
version (denoiser, reference UNet, VAEs, control nets), on the compute device. The node's output buffer (every
frame, output ``frames``) is added on the host.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..runtime import preflight as pf

MODEL = "HelloMeme"
_CACHE: dict = {}
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
             prompt=None, negative=None, runtime=None, output: str = "frames", **options) -> pf.Estimate:
    """The estimate of a HelloMeme run. ``controls``: the run's control source (its frame count is the video's);
    ``reference`` (H, W, 3); ``prompt``/``negative``: text embeddings (stand-ins of the UNet's text width when
    None); ``options``: the other :class:`.pipeline_video.VideoGeneration` / ``generate_image`` options."""
    from .pipeline_image import generate_image
    from .pipeline_video import generate_video

    rt = runtime
    device = torch.device(rt.device)
    frames = int(controls.num_frames) if video else 1
    key = (id(models.denoiser), id(controls), frames, tuple(reference.shape), video, steps, guidance_scale > 1.0,
           str(device), output, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key in _CACHE:
        return _CACHE[key]
    started = time.perf_counter()
    resident = modules(models)
    width = text_width(models)

    def run(trt, make):
        pos = prompt if prompt is not None else make(lambda: torch.zeros(1, 77, width))
        neg = negative if negative is not None else make(lambda: torch.zeros(1, 77, width))
        if video:
            return generate_video(models, trt, reference, pos, controls, negative_prompt_embeds=neg, steps=1,
                                  guidance_scale=guidance_scale, noise=0, **options)
        return generate_image(models, trt, reference, pos, controls, negative_prompt_embeds=neg, steps=1,
                              guidance_scale=guidance_scale, noise=0, **options)

    from . import pipeline_image, pipeline_video

    t = pf.trace(run, resident, device, real_calls=[(mod, name) for mod in (pipeline_video, pipeline_image)
                                                      for name in ("set_steps", "make_scheduler")])
    units = len(t.marks)
    first = t.marks[0] if t.marks else 0.0
    per_unit = (t.marks[-1] - first) / (units - 1) if units > 1 else first
    after = t.flops - (t.marks[-1] if t.marks else 0.0)                      # decoding
    flops = first + per_unit * (units * steps - 1) + after
    out = frames * reference.shape[-3] * reference.shape[-2] * 3 * 4 if (video and output == "frames") else 0
    peak = t.device_peak(device)
    if device.type == "cpu":
        work, host = peak + out, 0
    else:
        work, host = peak, t.device_peak("cpu") + out
    dtype = next(models.denoiser.parameters()).dtype
    est = pf.Estimate(
        model=f"{MODEL} {models.version} {'video' if video else 'image'}", device=str(device),
        weights=pf.module_bytes(resident), work=work, host=host, flops=flops,
        seconds=flops / pf.throughput(device, dtype), stages={"run": peak},
        settings={"frames": frames, "size": f"{reference.shape[-2]}x{reference.shape[-3]}", "steps": steps,
                  "cfg": guidance_scale, "output": output if video else "image",
                  "dtype": str(dtype).replace("torch.", "")})
    est.trace_seconds = time.perf_counter() - started
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[key] = est
    return est


FIXES = ("a smaller width/height", "fp16 or bf16 on HelloMeme Loader", "output 'video file' for long videos",
         "fewer driving frames (driving_fps)", "closing other programs or models that use the memory")


def ensure(models, controls, reference, runtime, video: bool = True, free: Optional[int] = None,
           **kwargs) -> pf.Estimate:
    """Refuse before any work when the run will not fit (:class:`runtime.preflight.PreflightError`)."""
    est = estimate(models, controls, reference, video=video, runtime=runtime, **kwargs)
    free = pf.free_bytes(runtime, modules(models)) if free is None else free
    return pf.check(est, free, FIXES)
