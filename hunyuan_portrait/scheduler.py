"""The Euler sampler HunyuanPortrait runs (SVD-xt EDM schedule, v-prediction), written without diffusers.

* sigmas: Karras (rho 7) from ``sigma_max`` 700 to ``sigma_min`` 0.002 over N points, computed in float64 and stored in
  float32, then a final 0;
* model timestep ``t = 0.25 ln(sigma)`` (float32);
* model input ``x / sqrt(sigma^2 + 1)``;
* v-prediction Euler step: ``x0 = v * (-sigma / sqrt(sigma^2+1)) + x / (sigma^2+1)``,
  ``x <- x + (x - x0) / sigma * (sigma_next - sigma)`` (no churn);
* image-to-image start: ``x = ref_latents + sigma_start * noise`` (not ``noise * sqrt(sigma^2+1)``), starting at index
  ``N - min(int(N * strength), N)``.

The official code reaches this through a subclass of diffusers' ``EulerDiscreteScheduler`` that passes its arguments
positionally (it breaks on diffusers >= 0.32); the arithmetic here follows the schedule it ends up with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..loaders.checkpoint import config_dict


@dataclass(frozen=True)
class EulerConfig:
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0

    @classmethod
    def from_dict(cls, config: dict) -> "EulerConfig":
        """From an SVD ``scheduler_config.json``; a config this sampler does not implement raises ``ValueError``."""
        if config.get("prediction_type", "v_prediction") != "v_prediction":
            raise ValueError(f"prediction_type {config.get('prediction_type')!r}: only v_prediction is implemented")
        if not config.get("use_karras_sigmas", True):
            raise ValueError("use_karras_sigmas false: only the Karras schedule is implemented")
        if config.get("timestep_type", "continuous") != "continuous":
            raise ValueError(f"timestep_type {config.get('timestep_type')!r}: only continuous is implemented")
        return cls(sigma_min=float(config.get("sigma_min", cls.sigma_min)),
                   sigma_max=float(config.get("sigma_max", cls.sigma_max)))


def scheduler_config(config=None) -> EulerConfig:
    """``None`` (SVD-xt), a dict, a ``scheduler_config.json`` path or a folder holding one (``scheduler/``)."""
    if isinstance(config, EulerConfig):
        return config
    raw, source = config_dict(config, "svd_xt_scheduler", "scheduler_config.json", subfolder="scheduler")
    try:
        return EulerConfig.from_dict(raw)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """(steps + 1,) float32: Karras sigmas from sigma_max to sigma_min, then 0."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([torch.from_numpy(sigmas.astype(np.float32)), torch.zeros(1)])


class EulerVScheduler:
    """Holds one schedule; every method takes the step index explicitly (windows restart at the same index)."""

    def __init__(self, config: EulerConfig | None = None, steps: int = 25):
        self.config = config or EulerConfig()
        self.set_timesteps(steps)

    def set_timesteps(self, steps: int) -> None:
        c = self.config
        self.sigmas = karras_sigmas(steps, c.sigma_min, c.sigma_max, c.rho)  # (steps+1,) float32
        self.timesteps = torch.stack([0.25 * s.log() for s in self.sigmas[:-1]])  # (steps,) float32
        self.steps = steps

    def start_index(self, strength: float = 1.0) -> int:
        """First step index of an image-to-image run of the given noise strength."""
        return self.steps - min(int(self.steps * strength), self.steps)

    def sigma(self, i: int) -> torch.Tensor:
        return self.sigmas[i]

    def add_noise(self, ref_latents: torch.Tensor, noise: torch.Tensor, i: int = 0) -> torch.Tensor:
        """ref_latents (B, C, h, w) (0.18215 x encoder mean), noise (B, F, C, h, w) -> ref + sigma_i * noise."""
        sigma = self.sigmas[i].to(device=ref_latents.device, dtype=ref_latents.dtype)
        return ref_latents.unsqueeze(1) + noise * sigma

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.sigmas[i]
        return x / ((sigma ** 2 + 1) ** 0.5)

    def predict_x0(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.sigmas[i]
        return v * (-sigma / (sigma ** 2 + 1) ** 0.5) + (x / (sigma ** 2 + 1))

    def step(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """One Euler step sigma_i -> sigma_{i+1} from the v-prediction ``v`` at state ``x``."""
        sigma = self.sigmas[i]
        x0 = self.predict_x0(v, x, i)
        return x + (x - x0) / sigma * (self.sigmas[i + 1] - sigma)


def load_scheduler(config=None, steps: int = 25) -> EulerVScheduler:
    return EulerVScheduler(scheduler_config(config), steps)


__all__ = ["EulerConfig", "EulerVScheduler", "karras_sigmas", "load_scheduler", "scheduler_config"]
