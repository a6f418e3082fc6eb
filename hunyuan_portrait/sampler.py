"""HunyuanPortrait long-sequence sampler: overlapping windows with a per-step rotating shift, three-branch guidance.

Per denoising step ``i`` (sigma_i -> sigma_{i+1}):

* ``shift_i = (i * shift_offset) mod window``; window ``k`` starts at ``k * (window - overlap) - shift_i`` for every
  ``k * (window - overlap) < F`` and covers ``window`` frames taken **modulo F** (a window may wrap to the start);
* each window: UNet on the three guidance branches [uncond, appearance + image latents, all] with input channels
  ``[x / sqrt(sigma^2+1), image latents]``, ``u + g1 (d - u) + g2 (c - d)`` with ``g1``, ``g2`` interpolated over the
  *steps*, one Euler step;
* every frame = the mean of the results of the windows that contain it (uniform).

The sequence state lives on the host (``state_device``); one window at a time moves to the UNet's device.
Motion padding (:func:`pad_motion`): ``pad`` copies of the first frame's tokens faded in (i/pad, i = 0..pad-1) before
the sequence and ``pad`` copies of the last frame's faded out (1 - i/pad) after it; frames are trimmed after decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .scheduler import EulerVScheduler


@dataclass
class SamplerSettings:
    """Official values (``config/hunyuan-portrait.yaml``)."""

    steps: int = 25
    window: int = 25
    overlap: int = 3
    shift_offset: int = 3
    min_appearance_guidance: float = 2.0
    max_appearance_guidance: float = 2.0
    min_motion_guidance: float = 2.0
    max_motion_guidance: float = 2.0
    fps: float = 12.5
    motion_bucket_id: float = 0.0
    noise_aug_strength: float = 0.0
    i2i_strength: float = 1.0

    def __post_init__(self):
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"overlap {self.overlap} must be in [0, window {self.window})")


def window_starts(num_frames: int, window: int, overlap: int, shift: int) -> list[int]:
    """Start frame (possibly negative) of every window of one step."""
    return [s - shift for s in range(0, num_frames, window - overlap)]


def window_frames(start: int, window: int, num_frames: int) -> list[int]:
    """Frame indices of a window, modulo the sequence length."""
    return [(start + j) % num_frames for j in range(window)]


def step_shift(step: int, shift_offset: int, window: int) -> int:
    shift = 0
    for _ in range(step):
        shift = (shift + shift_offset) % window
    return shift


def guidance_schedule(lo: float, hi: float, steps: int) -> torch.Tensor:
    """(steps,) float32 guidance scale per denoising step."""
    return torch.linspace(lo, hi, steps)


def three_branch_guidance(pred: torch.Tensor, g_appearance, g_motion) -> torch.Tensor:
    """pred (3B, ...) = [uncond, appearance only, full] -> u + g1 (d - u) + g2 (c - d)."""
    u, d, c = pred.chunk(3)
    return u + g_appearance * (d - u) + g_motion * (c - d)


def pad_motion(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """tokens (B, T, N, C) -> (B, pad + T + pad, N, C) with the fade-in / fade-out copies."""
    if pad <= 0:
        return tokens
    head = torch.stack([tokens[:, 0] * (i / pad) for i in range(pad)], dim=1)
    tail = torch.stack([tokens[:, -1] * (1 - i / pad) for i in range(pad)], dim=1)
    return torch.cat([head, tokens, tail], dim=1)


def cfg_context(appearance: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """appearance (B, N, C) per video, motion (B, W, N, C) per frame -> the UNet context of the three branches:
    appearance [0, app, app] (3B, N, C), motion [0, 0, mot] flattened to (3B*W, N, C)."""
    zeros_a, zeros_m = torch.zeros_like(appearance), torch.zeros_like(motion)
    app = torch.cat([zeros_a, appearance, appearance])
    mot = torch.cat([zeros_m, zeros_m, motion]).flatten(0, 1)
    return app, [mot]


def cfg_model_input(scaled: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
    """scaled (B, W, 4, h, w), image_latents (B, 4, h, w) -> (3B, W, 8, h, w) with image latents [0, lat, lat]."""
    w = scaled.shape[1]
    lat = image_latents.unsqueeze(1).expand(-1, w, -1, -1, -1)
    lat = torch.cat([torch.zeros_like(lat), lat, lat])
    return torch.cat([torch.cat([scaled] * 3), lat], dim=2)


def added_time_ids(settings: SamplerSettings, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(3B, 3) [fps, motion bucket, noise aug] (fps not reduced by 1)."""
    ids = torch.tensor([[settings.fps, settings.motion_bucket_id, settings.noise_aug_strength]], dtype=dtype)
    return ids.repeat(3 * batch, 1).to(device)


def denoise_window(unet, scheduler: EulerVScheduler, step: int, latents: torch.Tensor, image_latents: torch.Tensor,
                   appearance: torch.Tensor, motion: torch.Tensor, pose_features: Optional[torch.Tensor],
                   time_ids: torch.Tensor, g_appearance, g_motion) -> torch.Tensor:
    """One window, one step. latents (B, W, 4, h, w); motion (B, W, N, C); pose_features (B, W, C0, h, w) or
    broadcastable to (3B*W, C0, h, w); all on the UNet's device -> latents after the Euler step."""
    x_in = cfg_model_input(scheduler.scale_model_input(latents, step).to(image_latents.dtype), image_latents)
    if pose_features is not None and pose_features.ndim == 5:
        pose_features = torch.cat([pose_features] * 3)
    pred = unet(x_in, scheduler.timesteps[step], cfg_context(appearance, motion), time_ids, pose_features)
    guided = three_branch_guidance(pred, g_appearance, g_motion)
    return scheduler.step(guided, latents, step)


@torch.no_grad()
def sample(unet, scheduler: EulerVScheduler, latents: torch.Tensor, image_latents: torch.Tensor,
           appearance: torch.Tensor, motion: torch.Tensor, pose_features: Optional[torch.Tensor] = None,
           settings: SamplerSettings | None = None, device=None, dtype: torch.dtype | None = None,
           on_window: Optional[Callable[[int, int, torch.Tensor], None]] = None,
           on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
           interrupt: Optional[Callable[[], None]] = None, done_steps: int = 0) -> torch.Tensor:
    """Denoise a whole sequence.

    latents (B, F, 4, h, w) initial state (``scheduler.add_noise`` of the reference); image_latents (B, 4, h, w);
    appearance (B, N, C); motion (B, F, N, C) (padded); pose_features (C0, h, w) (constant map, broadcast) or
    (B, F, C0, h, w). The state stays where ``latents`` is; windows run on ``device`` (default: the UNet's) in
    ``dtype`` (default: the UNet's). ``on_window(step, k, window_latents)``, ``on_step(step, state)`` are called after
    each window / step. Returns the final state (B, F, 4, h, w).

    ``done_steps`` > 0 continues a run: ``latents`` is then the state ``on_step`` saw after that many steps (a
    resumed run); the step index, the window shift and the guidance scales follow from the count, so the result is
    the uninterrupted run's."""
    s = settings or SamplerSettings()
    device = torch.device(device) if device is not None else unet.device
    dtype = dtype or unet.dtype
    b, f = latents.shape[:2]
    start = scheduler.start_index(s.i2i_strength)
    n_steps = scheduler.steps - start
    g1 = guidance_schedule(s.min_appearance_guidance, s.max_appearance_guidance, n_steps).to(device, dtype)
    g2 = guidance_schedule(s.min_motion_guidance, s.max_motion_guidance, n_steps).to(device, dtype)
    time_ids = added_time_ids(s, b, device, dtype)
    image_latents = image_latents.to(device, dtype)
    appearance = appearance.to(device, dtype)
    if pose_features is not None and pose_features.ndim != 5:
        pose_features = pose_features.to(device, dtype)
    # the sequence state and its per-frame sums in the UNet's dtype, as the original (fp16: bit-exact Euler
    # arithmetic); bf16's 8-bit mantissa would round every window average, so a bf16 UNet keeps them in fp32
    state = latents.to(torch.float32 if dtype == torch.bfloat16 else dtype)

    shift = step_shift(done_steps, s.shift_offset, s.window)
    for i in range(done_steps, n_steps):
        step = start + i
        total = torch.zeros_like(state)
        count = torch.zeros(b, f, 1, 1, 1, dtype=state.dtype, device=state.device)
        for k, w0 in enumerate(window_starts(f, s.window, s.overlap, shift)):
            if interrupt is not None:
                interrupt()
            idx = window_frames(w0, s.window, f)
            index = torch.tensor(idx, device=state.device)
            pose = pose_features
            if pose is not None and pose.ndim == 5:
                pose = pose[:, idx].to(device, dtype)
            x = state[:, index].to(device)
            out = denoise_window(unet, scheduler, step, x, image_latents, appearance,
                                 motion[:, idx].to(device, dtype), pose, time_ids, g1[i], g2[i])
            if on_window is not None:
                on_window(i, k, out)
            total.index_add_(1, index, out.to(state.device, state.dtype))  # in window order, repeats included
            count.index_add_(1, index, torch.ones(b, len(idx), 1, 1, 1, dtype=count.dtype, device=count.device))
        state = total / count
        shift = (shift + s.shift_offset) % s.window
        if on_step is not None:
            on_step(i, state)
    return state


__all__ = ["SamplerSettings", "added_time_ids", "cfg_context", "cfg_model_input", "denoise_window",
           "guidance_schedule", "pad_motion", "sample", "step_shift", "three_branch_guidance", "window_frames",
           "window_starts"]
