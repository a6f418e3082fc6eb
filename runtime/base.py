"""The small interface the core uses for devices, dtypes, model residency, progress and cancellation.

Core code (pre-processing, samplers, pipelines) never imports ComfyUI. It receives a ``Runtime`` and asks it:

* where to compute (``device``) and where idle weights live (``offload_device``);
* which dtype to run a model in (``dtype``), honouring an explicit user choice;
* to make a set of models resident before use (``load``), which under ComfyUI may evict other models;
* for a progress reporter per loop (``progress``), whose ``update`` is also a cancellation point;
* whether the user asked to stop (``check_interrupted``).

Two implementations exist: :class:`runtime.standalone.StandaloneRuntime` for scripts and tests, and
:class:`runtime.comfy.ComfyRuntime` inside ComfyUI.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class Interrupted(RuntimeError):
    """Raised by the standalone runtime when a run is cancelled (ComfyUI raises its own exception)."""


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """Map "fp16"/"bf16"/"fp32"/"auto"/None or a torch dtype to a torch dtype (None means "let the runtime choose")."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower()
    if key in ("auto", "default", ""):
        return None
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {value!r}: use one of auto, fp32, fp16, bf16")
    return DTYPE_NAMES[key]


@dataclass(eq=False)
class ModelHandle:
    """A module the runtime manages. ``module`` stays the same object; the runtime moves its weights."""

    name: str
    module: torch.nn.Module
    dtype: torch.dtype
    extra: dict = field(default_factory=dict)  # runtime-specific state (the ModelPatcher under ComfyUI)

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class Progress(abc.ABC):
    """A progress reporter for one loop. ``update`` is a cancellation point."""

    @abc.abstractmethod
    def update(self, n: int = 1, preview=None) -> None: ...

    def grow(self, n: int) -> None:
        """Add ``n`` units to the total: the loop found more work than it announced (an identity guard's retry runs
        its steps again), so the bar still ends at exactly 100%. Reporters without a total ignore it."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Runtime(abc.ABC):
    name: str = "runtime"

    # ---- devices and dtypes -------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abc.abstractmethod
    def offload_device(self) -> torch.device: ...

    @abc.abstractmethod
    def default_dtype(self, role: str, supported: Sequence[torch.dtype]) -> torch.dtype:
        """The dtype this runtime prefers for a model of ``role`` ("diffusion", "vae", "encoder").

        ``supported`` lists the dtypes the model may run in, preferred first; the answer is one of them, or fp32,
        unless the user forced a precision for the whole runtime (a runtime ``dtype``, ComfyUI's ``--fp16-unet``...).
        A model that must never get a dtype by default (MEMO and fp16) leaves it out.
        """

    def dtype(self, requested: str | torch.dtype | None, role: str = "diffusion",
              supported: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32)) -> torch.dtype:
        """An explicit request wins; otherwise the runtime's policy for ``role`` decides."""
        chosen = parse_dtype(requested)
        if chosen is not None:
            return chosen
        return self.default_dtype(role, supported)

    # ---- model residency ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def manage(self, name: str, module: torch.nn.Module, dtype: torch.dtype) -> ModelHandle:
        """Register a module (weights on the offload device, cast to ``dtype``) and return its handle."""

    @abc.abstractmethod
    def load(self, handles: Iterable[ModelHandle]) -> None:
        """Make these models resident on ``device`` (together), evicting others if needed."""

    @abc.abstractmethod
    def offload(self, handles: Iterable[ModelHandle]) -> None:
        """Say that a stage is done with these models. The standalone runtime moves them back to ``offload_device``;
        under ComfyUI they stay loaded until its memory manager needs the room (or the user asked for aggressive
        freeing: ``--disable-smart-memory``, ``--lowvram``, ``--novram``), and are then unloaded whole."""

    # ---- progress and cancellation ------------------------------------------------------------------------------
    @abc.abstractmethod
    def progress(self, total: int, desc: str = "") -> Progress: ...

    @abc.abstractmethod
    def check_interrupted(self) -> None:
        """Raise if the user cancelled the run."""
