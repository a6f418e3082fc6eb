"""Plain-torch runtime for scripts and tests: one device, tqdm progress, cancellation through ``interrupt()``."""
from __future__ import annotations

import threading
from typing import Iterable, Sequence

import torch

from .base import Interrupted, ModelHandle, Progress, Runtime


class _TqdmProgress(Progress):
    def __init__(self, runtime: "StandaloneRuntime", total: int, desc: str, enabled: bool):
        self.runtime = runtime
        self.total = total
        self.value = 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, n: int = 1, preview=None) -> None:
        self.value += n
        if self.bar is not None:
            self.bar.update(n)
        for cb in self.runtime.callbacks:
            cb(self.value, self.total, preview)
        self.runtime.check_interrupted()

    def grow(self, n: int) -> None:
        self.total += int(n)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StandaloneRuntime(Runtime):
    """``StandaloneRuntime("cuda", dtype="fp16")`` runs everything on one device.

    ``offload`` moves idle models to ``offload_device`` (CPU by default) so that only the models in use occupy the
    accelerator; ``keep_loaded=True`` keeps them resident instead.
    """

    name = "standalone"

    def __init__(self, device: str | torch.device | None = None, offload_device: str | torch.device = "cpu",
                 dtype: str | torch.dtype | None = None, keep_loaded: bool = False, show_progress: bool = True):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._offload = torch.device(offload_device)
        self._dtype = dtype
        self.keep_loaded = keep_loaded
        self.show_progress = show_progress
        self._interrupt = threading.Event()
        self.callbacks: list = []  # f(value, total, preview), called on every progress update

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def offload_device(self) -> torch.device:
        return self._device if self.keep_loaded else self._offload

    def default_dtype(self, role: str, supported: Sequence[torch.dtype]) -> torch.dtype:
        """The runtime's own ``dtype`` if one was given; else, on a GPU, the first of bf16 (where native) and fp16
        that ``supported`` lists; else fp32. A caller that must never get fp16 leaves it out of ``supported``."""
        if self._dtype is not None:
            return self.dtype(self._dtype, role, supported) if not isinstance(self._dtype, torch.dtype) else self._dtype
        if self._device.type == "cuda":
            if torch.bfloat16 in supported and self.bf16_supported():
                return torch.bfloat16
            if torch.float16 in supported:
                return torch.float16
        return torch.float32

    def bf16_supported(self) -> bool:
        """Whether the compute device runs bf16 natively. Emulated bf16 (GPUs before Ampere) is slow and does not
        count; on the CPU bf16 works but is far slower than fp32, so it does not count either."""
        if self._device.type != "cuda":
            return False
        try:
            try:
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # older torch: no emulation switch
                return bool(torch.cuda.is_bf16_supported())
        except (AssertionError, RuntimeError):  # no usable CUDA device
            return False

    def manage(self, name: str, module: torch.nn.Module, dtype: torch.dtype) -> ModelHandle:
        module.to(device=self.offload_device, dtype=dtype).eval()
        return ModelHandle(name=name, module=module, dtype=dtype)

    def load(self, handles: Iterable[ModelHandle]) -> None:
        for h in handles:
            h.module.to(self._device)

    def offload(self, handles: Iterable[ModelHandle]) -> None:
        for h in handles:
            h.module.to(self.offload_device)

    def progress(self, total: int, desc: str = "") -> Progress:
        return _TqdmProgress(self, total, desc, self.show_progress)

    def interrupt(self) -> None:
        """Ask the running job to stop at its next progress update (thread-safe)."""
        self._interrupt.set()

    def check_interrupted(self) -> None:
        if self._interrupt.is_set():
            self._interrupt.clear()
            raise Interrupted("cancelled")
