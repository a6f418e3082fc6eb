"""Schedulers and random draws of the HelloMeme v5 pipelines.

Schedulers are constructed fresh for every denoising pass, exactly as the original pipelines do (they never reuse the
checkpoint's scheduler): SD1.5 betas (``scaled_linear`` 0.00085 -> 0.012 over 1000 training steps), epsilon
prediction, ``linspace`` timestep spacing.

* ``"dpmpp_sde"`` -- ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`` (order 2, midpoint, lower order
  final, final sigma zero): v3/v4 image and every v5 pipeline.
* ``"euler"`` -- ``EulerDiscreteScheduler``: v1/v2 and the v3/v4 video pipelines.

Random draws
------------
Every random tensor a pipeline needs goes through a :class:`NoiseSource`, in a fixed order: the VAE posterior noise
of the reference latent, the initial latent noise, then one draw per DPM++ SDE step (shaped like the latents of the
pass being stepped).

* :class:`SeededNoise` (the default) draws everything from one seeded ``torch.Generator`` on the CPU, so a seed fully
  determines the output, on any device. The first two draws equal the original's for the same seed (it draws them
  from the seeded generator too); the SDE draws differ: the original forwards no generator to the scheduler (its own
  scheduler is the checkpoint's PNDM, whose ``step`` takes none) so its SDE noise comes from torch's *global* RNG and
  a seed does not reproduce an original run.
* :class:`RecordedNoise` replays given tensors in order -- the faithful-parity mode used with the recorded draws of
  the parity cases (``draw.*`` inputs).
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

import torch

SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="linspace",
    steps_offset=0,
)

SCHEDULER_KINDS = ("dpmpp_sde", "euler")


def make_scheduler(kind: str = "dpmpp_sde", config: dict | None = None):
    """A fresh scheduler of ``kind`` with the SD1.5 schedule; ``config`` overrides entries (e.g. a case's full
    scheduler config). Timesteps are not set yet: call :func:`set_steps`."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cfg = dict(SD15_SCHEDULE)
    if kind == "dpmpp_sde":
        cfg.update(algorithm_type="sde-dpmsolver++")
        cls = DPMSolverMultistepScheduler
    elif kind == "euler":
        cls = EulerDiscreteScheduler
    else:
        raise ValueError(f"unknown scheduler {kind!r}: use one of {', '.join(SCHEDULER_KINDS)}")
    if config:
        cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
    return cls.from_config(cfg)


def set_steps(scheduler, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Set ``steps`` inference steps and return the timesteps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler.set_timesteps(steps, device=device)
    return scheduler.timesteps


def uses_step_noise(scheduler) -> bool:
    """Whether ``scheduler.step`` consumes fresh noise (SDE variants)."""
    return "sde" in str(getattr(scheduler.config, "algorithm_type", ""))


# ---- random draws -------------------------------------------------------------------------------------------------
class NoiseSource:
    """Supplies the random tensors of a run, in call order. ``kind`` names the draw (``vae_posterior``, ``latents``,
    ``sde``) for error messages and for sources that care."""

    def draw(self, shape: Sequence[int], kind: str) -> torch.Tensor:
        raise NotImplementedError


class SeededNoise(NoiseSource):
    """All draws from one seeded CPU generator (float32), so results do not depend on the compute device."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.generator = torch.Generator("cpu").manual_seed(self.seed)

    def draw(self, shape: Sequence[int], kind: str) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)


class RecordedNoise(NoiseSource):
    """Replays recorded draws in order (faithful-parity mode). Shapes must match what the pipeline asks for."""

    def __init__(self, draws: Iterable[torch.Tensor]):
        self.queue = deque(draws)
        self.used = 0

    def draw(self, shape: Sequence[int], kind: str) -> torch.Tensor:
        if not self.queue:
            raise RuntimeError(f"recorded noise exhausted after {self.used} draws (asked for {kind} {tuple(shape)})")
        t = self.queue.popleft()
        if tuple(t.shape) != tuple(shape):
            raise RuntimeError(f"recorded draw #{self.used} has shape {tuple(t.shape)}, but the pipeline asks for "
                               f"{kind} {tuple(shape)}: the run does not follow the recorded call order")
        self.used += 1
        return t.detach().to("cpu", torch.float32)


def as_noise_source(noise: NoiseSource | int | None) -> NoiseSource:
    if isinstance(noise, NoiseSource):
        return noise
    return SeededNoise(0 if noise is None else int(noise))


def scheduler_step(scheduler, eps: torch.Tensor, t, latents: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """One scheduler step on ``latents`` (on their device); SDE noise is drawn from ``noise`` (shaped like
    ``latents``) so runs are reproducible."""
    kwargs = {}
    if uses_step_noise(scheduler):
        kwargs["variance_noise"] = noise.draw(latents.shape, "sde").to(latents.device)
    return scheduler.step(eps, t, latents, return_dict=False, **kwargs)[0]
