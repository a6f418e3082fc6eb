"""Opt-in accelerations shared by the samplers: the attention kernel, ``torch.compile`` of the denoiser's blocks and
feature reuse across steps, as one small :class:`SpeedOptions` value (the *Speed Options* node builds it; precision is
the loaders' dtype).

The default options are the exact path: PyTorch SDPA with its own backend choice, eager modules, the loader's dtype.
Everything else changes the arithmetic a little and is measured in the README (speed-up and difference from the
exact path).

Attention kernels (``attention``):

* ``sdpa``: PyTorch ``scaled_dot_product_attention``, backend chosen by PyTorch (default, exact path);
* ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` / ``sdpa_math``: SDPA restricted to one backend
  (``torch.nn.attention.sdpa_kernel``); PyTorch raises if that backend cannot take a call, so these are for
  measuring, ``sdpa`` picks the best one that fits anyway;
* ``sage``: SageAttention (``pip install sageattention``, CUDA, fp16/bf16) where the head size is one it supports
  (:data:`SAGE_HEAD_DIMS`); other calls fall back to SDPA and are counted;
* ``comfy``: whatever attention ComfyUI was launched with (``--use-sage-attention``, ``--use-flash-attention``,
  xformers, PyTorch...); ``comfy:<name>`` one of ComfyUI's registered functions by name. Only inside ComfyUI.

The kernel reaches every attention of the pack's own modules through :func:`layers.attention.attention`, and the
self-attention of diffusers ``Attention`` modules (HelloMeme's SD1.5 UNet, HunyuanPortrait's SVD UNet) through
:class:`KernelAttnProcessor`, swapped in for the duration of :func:`accelerated` only.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import AttentionKernel, attention, attention_kernel

log = logging.getLogger(__name__)

ATTENTION_CHOICES = ("sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "sage", "comfy")
COMPILE_CHOICES = ("off", "default", "max-autotune-no-cudagraphs")
SAGE_HEAD_DIMS = (64, 96, 128)  # head sizes SageAttention takes natively (SD1.5 uses 40/80/160 and falls back)
_SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION",
                  "sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_math": "MATH"}


@dataclass(frozen=True)
class SpeedOptions:
    """What a sampler may trade for speed. ``SpeedOptions()`` is the exact path."""

    attention: str = "sdpa"
    compile: str = "off"  # torch.compile mode for the denoiser's blocks
    compile_dynamic: bool = False
    # feature reuse across steps (DeepCache-style) in the SD1.5 denoisers that support it (HelloMeme, MEMO): every
    # cache_interval-th step runs the whole UNet, the steps between reuse its deep features; 1 = off
    cache_interval: int = 1

    def __post_init__(self):
        base = self.attention.split(":", 1)[0]
        if base not in ATTENTION_CHOICES:
            raise ValueError(f"unknown attention {self.attention!r}: use one of {', '.join(ATTENTION_CHOICES)}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"unknown compile mode {self.compile!r}: use one of {', '.join(COMPILE_CHOICES)}")
        if not 1 <= int(self.cache_interval) <= 10:
            raise ValueError(f"cache_interval must be between 1 (off) and 10, got {self.cache_interval}")

    def with_(self, **changes) -> "SpeedOptions":
        return replace(self, **changes)


EXACT = SpeedOptions()


# ---- attention kernels -------------------------------------------------------------------------------------------


class SageKernel:
    """SageAttention where it applies (CUDA, fp16/bf16, head size in :data:`SAGE_HEAD_DIMS`), SDPA elsewhere.

    ``calls`` / ``fallbacks`` count what happened, so a run can report how much attention actually used it."""

    def __init__(self, sageattn: Callable):
        self.sageattn = sageattn
        self.calls = 0
        self.fallbacks = 0

    def applies(self, q: torch.Tensor) -> bool:
        return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in SAGE_HEAD_DIMS

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.applies(q):
            self.calls += 1
            return self.sageattn(q, k, v, tensor_layout="HND", is_causal=False)
        self.fallbacks += 1
        return F.scaled_dot_product_attention(q, k, v)


def comfy_kernel(name: str | None = None) -> AttentionKernel:
    """ComfyUI's attention function (the launch choice, or a registered one by ``name``) on (B, heads, L, d)."""
    if "comfy.model_management" not in sys.modules:
        raise ValueError("attention 'comfy' uses ComfyUI's attention settings and only works inside ComfyUI; "
                         "pick 'sdpa' or 'sage' when running the pack on its own")
    module = importlib.import_module("comfy.ldm.modules.attention")
    if name:
        fn = module.get_attention_function(name, default=None)
        if fn is None:
            raise ValueError(f"ComfyUI has no attention function {name!r} registered (is its package installed?)")
    else:
        fn = module.optimized_attention

    def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fn(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True)

    return kernel


def attention_kernel_for(options: SpeedOptions) -> Optional[AttentionKernel]:
    """The kernel :func:`layers.attention.attention` should call (``None``: plain SDPA)."""
    base, _, name = options.attention.partition(":")
    if base == "sage":
        try:
            from sageattention import sageattn
        except ImportError as exc:
            raise ValueError("attention 'sage' needs SageAttention: pip install sageattention (CUDA only); "
                             "or pick 'sdpa'") from exc
        return SageKernel(sageattn)
    if base == "comfy":
        return comfy_kernel(name or None)
    return None


@contextlib.contextmanager
def sdpa_backend(options: SpeedOptions) -> Iterator[None]:
    """Restrict PyTorch SDPA to one backend for ``sdpa_<backend>`` options (a no-op otherwise)."""
    backend = _SDPA_BACKENDS.get(options.attention)
    if backend is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, backend)]):
        yield


class KernelAttnProcessor:
    """A diffusers ``Attention`` processor for plain (self- or cross-) attention that calls
    :func:`layers.attention.attention`, so diffusers UNets follow the speed options' kernel.

    Calls it does not cover (masks, spatial/group norms, 4-D inputs, normalised cross context, custom scales) go to
    the processor it replaced."""

    def __init__(self, fallback):
        self.fallback = fallback

    @staticmethod
    def covers(attn, hidden_states, attention_mask) -> bool:
        return (attention_mask is None and hidden_states.ndim == 3 and getattr(attn, "spatial_norm", None) is None
                and getattr(attn, "group_norm", None) is None and not getattr(attn, "norm_cross", None)
                and getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
                and abs(attn.scale - (attn.inner_dim // attn.heads) ** -0.5) < 1e-12)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if not self.covers(attn, hidden_states, attention_mask):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)  # (B, L, heads*d)
        b, heads = q.shape[0], attn.heads
        d = k.shape[-1] // heads
        split = lambda t: t.view(b, -1, heads, d).transpose(1, 2)  # noqa: E731  (B, heads, L, d)
        out = attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def diffusers_attention_modules(*modules: nn.Module) -> list[nn.Module]:
    """Every diffusers ``Attention`` module under ``modules``."""
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return []
    return [m for root in modules for m in root.modules() if isinstance(m, Attention)]


def _plain_processors(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """diffusers ``Attention`` modules whose processor is diffusers' own SDPA processor (not an adapter's)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    return [m for m in diffusers_attention_modules(*modules) if type(m.processor) is AttnProcessor2_0]


@contextlib.contextmanager
def kernel_processors(modules: Iterable[nn.Module]) -> Iterator[int]:
    """Route the diffusers attention of ``modules`` through :func:`layers.attention.attention` inside the block;
    yields how many processors were swapped. The original processors are restored on exit."""
    swapped = _plain_processors(modules)
    originals = [m.processor for m in swapped]
    for m, p in zip(swapped, originals):
        m.processor = KernelAttnProcessor(p)
    try:
        yield len(swapped)
    finally:
        for m, p in zip(swapped, originals):
            m.processor = p


# ---- torch.compile ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def compiled_blocks(blocks: Iterable[nn.Module], options: SpeedOptions) -> Iterator[int]:
    """``torch.compile`` each block in place inside the block (``nn.Module.compile``: the state-dict keys and the
    ModelPatcher's view of the module do not change), eager again on exit. Compiling the repeated blocks one by one
    (regional compilation) traces each distinct block once instead of the whole denoiser; dynamo keeps its compiled
    code between runs, so a second run with the same shapes does not compile again. Yields how many blocks run
    compiled; a no-op with ``compile='off'``."""
    if options.compile == "off":
        yield 0
        return
    mode = None if options.compile == "default" else options.compile
    ours = [b for b in blocks if getattr(b, "_compiled_call_impl", None) is None]
    for block in ours:
        block.compile(mode=mode, dynamic=options.compile_dynamic)
    try:
        yield len(ours)
    finally:
        for block in ours:
            block._compiled_call_impl = None


def denoiser_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a UNet-like denoiser worth compiling: the ``down_blocks``, ``mid_block`` and
    ``up_blocks`` (diffusers naming, used by every denoiser of the pack) of ``model`` or of the first sub-module that
    has them (``SKDenoiser.unet``)."""
    for module in model.modules():
        if hasattr(module, "down_blocks") and hasattr(module, "up_blocks"):
            blocks = [*module.down_blocks, *module.up_blocks]
            if getattr(module, "mid_block", None) is not None:
                blocks.append(module.mid_block)
            return blocks
    return []


# ---- the whole set -----------------------------------------------------------------------------------------------


class DeepFeature:
    """One denoiser call site's stored deep features for feature reuse across steps (DeepCache-style): what enters
    the last up block (its hidden states, and any stream carried beside them, e.g. MEMO's audio tokens), kept on
    ``store_device`` (the host by default, so a long video's windows do not hold accelerator memory). ``reuse``
    says whether the next call may use them instead of the deep blocks; ``stores`` counts the full calls that
    stored."""

    def __init__(self, store_device: torch.device | str = "cpu"):
        self.store_device = torch.device(store_device)
        self.tensors: tuple[torch.Tensor | None, ...] | None = None
        self.reuse = False
        self.stores = 0

    @property
    def stored(self) -> bool:
        return self.tensors is not None

    def store(self, *tensors: torch.Tensor | None) -> None:
        self.tensors = tuple(None if t is None else t.detach().to(self.store_device, copy=True) for t in tensors)
        self.stores += 1

    def load(self, device, dtype):
        """The stored tensor (one was stored) or tuple of tensors, on ``device`` in ``dtype``."""
        if self.tensors is None:
            raise RuntimeError("feature reuse asked before a full step stored the deep feature")
        out = tuple(None if t is None else t.to(device=device, dtype=dtype) for t in self.tensors)
        return out[0] if len(out) == 1 else out


def reuse_interval(options: SpeedOptions | None, what: str, supported: bool = True) -> int:
    """The feature-reuse interval a sampler runs with (1: every step whole). A sampler without feature reuse
    (``supported=False``) gets 1, and the log says once per call that ``cache_interval`` was ignored for ``what``."""
    interval = options.cache_interval if options is not None else 1
    if interval > 1 and not supported:
        log.warning("Speed Options: cache_interval=%d is not supported for %s yet (HelloMeme and MEMO only); ignored",
                    interval, what)
        return 1
    return interval


@contextlib.contextmanager
def accelerated(options: SpeedOptions | None, models: Iterable[nn.Module] = ()) -> Iterator[SpeedOptions]:
    """Apply ``options`` to a sampling run over ``models`` (the denoisers): kernel, SDPA backend, diffusers
    processors, compiled blocks. The default attention and no compilation change nothing. Feature reuse is the
    sampler's own loop (:func:`reuse_interval`)."""
    options = options or EXACT
    models = list(models)
    if options.attention == "sdpa" and options.compile == "off":
        yield options
        return
    kernel = attention_kernel_for(options)
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_backend(options))
        stack.enter_context(attention_kernel(kernel))
        if kernel is not None:
            stack.enter_context(kernel_processors(models))
        stack.enter_context(compiled_blocks([b for m in models for b in denoiser_blocks(m)], options))
        yield options
    if isinstance(kernel, SageKernel):
        log.info("SageAttention ran %d attention calls; %d fell back to SDPA (head size, dtype or device)",
                 kernel.calls, kernel.fallbacks)
