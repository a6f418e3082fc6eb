"""ComfyUI runtime: models under ``ModelPatcher`` and ``comfy.model_management``; ``ProgressBar`` per step.

Imported only inside ComfyUI (the module imports ``comfy`` lazily in its methods so that importing the pack stays
cheap). Our modules are built from plain torch layers, which ComfyUI cannot stream partially (it can only do that for
its own ``comfy.ops`` layers, which cast weights on the fly). So the pack's models are managed by a
:func:`whole_model_patcher` that loads *and unloads* them whole: ComfyUI still accounts for their memory, evicts
other models to make room and evicts ours when something else needs the space (``--lowvram`` included), but it can
never leave one of them split between the GPU and the offload device, which would break its next forward pass with
a device-mismatch error. Models a stage uses together must therefore be loaded in one :meth:`ComfyRuntime.load`
call: a later ``load`` of another model may evict them.
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

    def grow(self, n: int) -> None:
        # ProgressBar clamps its value to its ``total`` and sends that total with each update it reports (0.3.64
        # every one; newer versions throttle those between the first and the final one)
        self.total += int(n)
        self.bar.update_absolute(self.bar.current, self.total)


class _Holder(torch.nn.Module):
    """A plain module holding the managed one (its weights move with it)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


_WHOLE_PATCHER = None


def whole_model_patcher():
    """The ``ModelPatcher`` subclass for the pack's models, built on first use (it needs ``comfy``).

    ComfyUI's memory manager makes room with ``LoadedModel.model_unload(memory_to_free)``, which calls
    ``partially_unload`` to move just enough submodules to the offload device, and loads with ``partially_load`` /
    ``load(lowvram_model_memory=...)``, which may leave the largest submodules behind. Both are only safe for
    ``comfy.ops`` layers. This subclass turns every partial request into a whole one, in ComfyUI 0.3.x and 0.33+
    alike (same method names; 0.33 adds a ``force_patch_weights`` argument to ``partially_unload``):

    * ``load`` always runs with ``full_load=True``;
    * ``partially_load`` always asks for more memory than the model needs, so it loads the model completely;
    * ``partially_unload`` moves the whole model to the offload device and reports everything it held as freed,
      which is at least what was asked for, so ComfyUI counts the room as made (its bookkeeping stays true:
      ``loaded_size()`` is 0 afterwards and a later load moves the whole model back).
    """
    global _WHOLE_PATCHER
    if _WHOLE_PATCHER is None:
        import comfy.model_patcher

        class WholeModelPatcher(comfy.model_patcher.ModelPatcher):
            def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False,
                     *args, **kwargs):
                return super().load(device_to, lowvram_model_memory, force_patch_weights, True, *args, **kwargs)

            def partially_load(self, device_to, extra_memory=0, force_patch_weights=False, *args, **kwargs):
                return super().partially_load(device_to, 1e32, force_patch_weights, *args, **kwargs)

            def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs):
                freed = self.loaded_size()
                if freed > 0:
                    self.detach(unpatch_all=True)  # every weight to the offload device; loaded_size() becomes 0
                return freed

        _WHOLE_PATCHER = WholeModelPatcher
    return _WHOLE_PATCHER


def _eager_offload() -> bool:
    """True when the user asked ComfyUI to keep accelerator memory low (``--disable-smart-memory``, ``--lowvram``,
    ``--novram``): then a stage's models leave the device as soon as the stage is done. Otherwise they stay until
    ComfyUI needs the room, so the next stage or the next run reuses them without a transfer."""
    import comfy.model_management as mm

    if getattr(mm, "DISABLE_SMART_MEMORY", False):
        return True
    state = getattr(mm, "vram_state", None)
    return state in (getattr(mm.VRAMState, "LOW_VRAM", None), getattr(mm.VRAMState, "NO_VRAM", None))


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
        module.to(device=self.offload_device, dtype=dtype).eval()
        # ModelPatcher writes bookkeeping attributes (``device``, ``model_loaded_weight_memory``...) on the module it
        # manages; diffusers/transformers models have a read-only ``device``, so it manages a plain holder instead.
        holder = _Holder(module)
        patcher = whole_model_patcher()(holder, load_device=self.device, offload_device=self.offload_device)
        return ModelHandle(name=name, module=module, dtype=dtype, extra={"patcher": patcher})

    def load(self, handles: Iterable[ModelHandle]) -> None:
        """Make ``handles`` resident together, in one ``load_models_gpu`` call: ComfyUI makes room for all of them at
        once and reloads any of them it evicted while making room. Loading them one call at a time would let a later
        call evict an earlier one."""
        import comfy.model_management as mm

        patchers = list({id(h.extra["patcher"]): h.extra["patcher"] for h in handles}.values())
        if patchers:
            mm.load_models_gpu(patchers, force_full_load=True)

    def offload(self, handles: Iterable[ModelHandle]) -> None:
        """Called after every stage. ComfyUI decides when to evict (whole, see :func:`whole_model_patcher`), so
        nothing moves here unless the user asked for aggressive freeing (:func:`_eager_offload`)."""
        import comfy.model_management as mm

        if not _eager_offload():
            return
        patchers = {id(h.extra["patcher"]) for h in handles}
        for loaded in list(mm.current_loaded_models):
            if id(loaded.model) in patchers:
                loaded.model_unload()
                mm.current_loaded_models.remove(loaded)
        mm.soft_empty_cache()

    def progress(self, total: int, desc: str = "") -> Progress:
        return _ComfyProgress(total, node_id=self.node_id)

    def check_interrupted(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
