"""ComfyUI runtime: models under ``ModelPatcher`` and ``comfy.model_management``; ``ProgressBar`` per step.

Imported only inside ComfyUI (the module imports ``comfy`` lazily in its methods so that importing the pack stays
cheap). Our modules are built from plain torch layers, which ComfyUI cannot stream partially, so they are loaded
whole with ``force_full_load=True``; ComfyUI still accounts for their memory and evicts other models to make room,
and moves ours back to its offload device when something else needs the space (``--lowvram`` included).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .base import ModelHandle, Progress, Runtime


class _ComfyProgress(Progress):
    def __init__(self, total: int, node_id=None):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.total = total

    def update(self, n: int = 1, preview=None) -> None:
        # ComfyUI's global progress hook raises InterruptProcessingException when the user cancels.
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
        if preview is None:
            self.bar.update(n)
        else:
            self.bar.update_absolute(self.bar.current + n, self.total, preview)


class _Holder(torch.nn.Module):
    """A plain module holding the managed one (its weights move with it)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class ComfyRuntime(Runtime):
    name = "comfyui"

    def __init__(self, node_id=None):
        self.node_id = node_id

    @property
    def device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.get_torch_device()

    @property
    def offload_device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.unet_offload_device()

    def default_dtype(self, role: str, supported: Sequence[torch.dtype]) -> torch.dtype:
        import comfy.model_management as mm

        if role == "vae":
            return mm.vae_dtype(self.device, list(supported))
        if role == "encoder":
            return mm.text_encoder_dtype(self.device)
        return mm.unet_dtype(self.device, supported_dtypes=list(supported))

    def manage(self, name: str, module: torch.nn.Module, dtype: torch.dtype) -> ModelHandle:
        import comfy.model_patcher

        module.to(device=self.offload_device, dtype=dtype).eval()
        # ModelPatcher writes bookkeeping attributes (``device``, ``model_loaded_weight_memory``...) on the module it
        # manages; diffusers/transformers models have a read-only ``device``, so it manages a plain holder instead.
        holder = _Holder(module)
        patcher = comfy.model_patcher.ModelPatcher(holder, load_device=self.device, offload_device=self.offload_device)
        return ModelHandle(name=name, module=module, dtype=dtype, extra={"patcher": patcher})

    def load(self, handles: Iterable[ModelHandle]) -> None:
        import comfy.model_management as mm

        mm.load_models_gpu([h.extra["patcher"] for h in handles], force_full_load=True)

    def offload(self, handles: Iterable[ModelHandle]) -> None:
        # ComfyUI decides when to evict; nothing to do unless the user asked for aggressive freeing.
        import comfy.model_management as mm

        for h in handles:
            patcher = h.extra["patcher"]
            for loaded in list(mm.current_loaded_models):
                if loaded.model is patcher:
                    loaded.model_unload()
                    mm.current_loaded_models.remove(loaded)
        mm.soft_empty_cache()

    def progress(self, total: int, desc: str = "") -> Progress:
        return _ComfyProgress(total, node_id=self.node_id)

    def check_interrupted(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
