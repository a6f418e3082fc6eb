"""MEMO Diffusion Net: the SD1.5-shaped 3D UNet that predicts the flow-matching velocity of a clip.

Per cross-attention layer: resnet -> spatial transformer (self-attention with the reference image's tokens as extra
keys/values, cross-attention to the identity tokens, GEGLU FF) -> emotion-aware audio module -> memory-guided
temporal module. Resnet-only levels: resnet -> temporal module. Mid block: resnet -> transformer -> audio -> temporal
-> resnet. All 2D operations run per frame; internally the clip is kept as per-frame rows ``(B*F, C, H, W)``
(batch-major: row = b*F + f), the public tensors are ``(B, C, F, H, W)``.

Conditioning (one call, CFG batch ``B = 2`` as ``[uncond, cond]``):

* ``ref_features``: the Reference Net output for the reference batch ``B x [reference, N past frames]``; per layer,
  frame 0 of each batch element gives the self-attention reference tokens, frames 1..N the temporal module's motion
  frames (for resnet-only levels the resnet outputs).
* ``uc_mask``: rows whose self-attention drops the reference tokens (the uncond half). When its length differs from
  ``B*F`` the first half of the rows is used (the official fallback; same result for F = 16).
* ``encoder_hidden_states (B, 4, 768)`` identity tokens, ``audio_embedding (B, F, T, A)`` audio tokens,
  ``audio_emotion (B,)`` labels (9 = null), ``timestep`` float in [1, 1000].
* Memory flags: ``is_new_audio`` resets every temporal memory before updating it; ``update_past_memory`` decays it
  and adds the new motion frames; otherwise it is reused. The state lives on the temporal layers and carries across
  calls (:meth:`DiffusionNet.reset_memory`, :meth:`DiffusionNet.memory_to`).

Reference tiling quirk (``faithful_tiling=True``, the official behaviour): the per-half reference tokens are tiled
over the frames with a plain ``repeat``, so row ``r`` uses the reference tokens of batch element ``r % B``;
``faithful_tiling=False`` uses element ``r // F`` (each half its own reference).

``use_inflated_groupnorm`` (config): True normalises resnet/``conv_norm_out`` GroupNorms per frame; False pools
statistics over the F frames of each batch element. Temporal positional encoding: see ``motion_module_kwargs``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.emotion_modules import AudioModule
from ..layers.attention import Attention, multihead_attention
from ..layers.embeddings import TimestepEmbedding, timestep_embedding, timesteps_for_batch
from ..layers.feedforward import FeedForward
from ..motion.memory_attention import MemoryLinearAttention, MemoryState, MemoryTemporalModule, MotionModuleConfig
from ..runtime.speed import DeepFeature
from .layers import (Downsample, ResnetBlock, Upsample, check_block_types, check_config_values, clip_group_norm,
                     dataclass_from_config, heads_per_block)

_UNSUPPORTED_3D = {
    "class_embed_type": None, "num_class_embeds": None, "dual_cross_attention": False,
    "use_linear_projection": False, "only_cross_attention": False, "resnet_time_scale_shift": "default",
    "act_fn": "silu", "center_input_sample": False, "upcast_attention": False,
    "unet_use_temporal_attention": (None, False), "unet_use_cross_frame_attention": (None, False),
    "mid_block_type": "UNetMidBlock3DCrossAttn",
}


@dataclass
class DiffusionNetConfig:
    """The fields of ``diffusion_net/config.json`` the network depends on (released values by default)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    up_block_types: tuple = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    layers_per_block: int = 2
    attention_head_dim: object = 8  # SD1.5 convention: number of heads per block
    cross_attention_dim: int = 768
    audio_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    use_inflated_groupnorm: bool = False
    motion_module_resolutions: tuple = (1, 2, 4, 8)
    motion_module_kwargs: dict = field(default_factory=dict)
    emo_drop_rate: float = 0.3

    @classmethod
    def from_dict(cls, config: dict) -> "DiffusionNetConfig":
        check_config_values(config, _UNSUPPORTED_3D, "diffusion_net")
        cfg = dataclass_from_config(cls, config)
        check_block_types(cfg, ("CrossAttnDownBlock3D", "DownBlock3D"), ("CrossAttnUpBlock3D", "UpBlock3D"),
                          "diffusion_net")
        MotionModuleConfig.from_dict(cfg.motion_module_kwargs)  # validate early
        return cfg

    @property
    def heads(self) -> list[int]:
        return heads_per_block(self.attention_head_dim, len(self.block_out_channels))

    @property
    def motion(self) -> MotionModuleConfig:
        return MotionModuleConfig.from_dict(self.motion_module_kwargs)

    @property
    def emotion_null_class(self) -> bool:
        return self.emo_drop_rate > 0


# ------------------------------------------------------------------------------------------------------------------
# Spatial transformer with reference self-attention
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class ReferenceRows:
    """Which rows of one Diffusion Net call attend to reference tokens, resolved once per call (no block syncs with
    the host or gathers by a boolean mask).

    ``cond`` / ``uncond``: the rows with / without reference tokens, as a slice when they are contiguous (the CFG
    layout ``[uncond, cond]``), else a long index tensor, None when there are none. ``elements``: the reference
    element each ``cond`` row uses, an int when all use the same one, else a ``(rows,)`` long index tensor.
    """

    cond: slice | torch.Tensor | None
    uncond: slice | torch.Tensor | None
    elements: int | torch.Tensor

    @classmethod
    def build(cls, uncond_rows: torch.Tensor | None, batch: int, frames: int, faithful_tiling: bool,
              device) -> "ReferenceRows":
        """``uncond_rows (B*F,)`` bool (None: every row has reference tokens)."""
        rows = batch * frames
        flags = [False] * rows if uncond_rows is None else [bool(v) for v in uncond_rows.cpu().tolist()]
        cond = [r for r in range(rows) if not flags[r]]
        uncond = [r for r in range(rows) if flags[r]]
        # faithful: row r uses element r % B (the official plain repeat); else each batch element its own
        elems = [(r % batch) if faithful_tiling else (r // frames) for r in cond]
        elements = elems[0] if elems and all(e == elems[0] for e in elems) else \
            torch.tensor(elems, dtype=torch.long, device=device)
        return cls(_selector(cond, device), _selector(uncond, device), elements)


def _selector(rows: list[int], device) -> slice | torch.Tensor | None:
    if not rows:
        return None
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.long, device=device)


def _take(t: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


def _per_row(t: torch.Tensor, elements: int | torch.Tensor, rows: int) -> torch.Tensor:
    """Per-element ``(B, L, C)`` -> per-row ``(rows, L, C)`` (a stride-0 view when all rows share one element)."""
    if isinstance(elements, int):
        return t[elements:elements + 1].expand(rows, -1, -1)
    return t.index_select(0, elements)


class ReferenceAttentionBlock(nn.Module):
    """``norm1 -> attn1`` (keys/values = [own tokens ; reference tokens], plain self-attention for uncond rows)
    ``-> norm2 -> attn2`` (identity tokens) ``-> norm3 -> ff``.

    The reference tokens are projected to keys/values once per reference element (not once per row, which is what
    the official per-frame tiling amounts to) and shared by the rows that use them; with a ``cache`` (one dict per
    set of reference features, e.g. one clip) once per clip.
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim // heads, context_dim=cross_attention_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def _reference_kv(self, reference: torch.Tensor, dtype: torch.dtype, cache: dict | None):
        key = ("reference_kv", id(self))
        if cache is not None and key in cache:
            return cache[key]
        ref = reference.to(dtype)
        kv = (self.attn1.to_k(ref), self.attn1.to_v(ref))  # (B, Lr, inner) each
        if cache is not None:
            cache[key] = kv
        return kv

    def _with_reference(self, n: torch.Tensor, kv_ref, elements) -> torch.Tensor:
        # n: (R, L, C); keys/values [own tokens ; the row's reference element's tokens]
        a, r = self.attn1, n.shape[0]
        k = torch.cat([a.to_k(n), _per_row(kv_ref[0], elements, r)], dim=1)
        v = torch.cat([a.to_v(n), _per_row(kv_ref[1], elements, r)], dim=1)
        return a.to_out[0](multihead_attention(a.to_q(n), k, v, a.heads))

    def forward(self, x: torch.Tensor, reference: torch.Tensor, context: torch.Tensor, rows: ReferenceRows,
                cache: dict | None = None) -> torch.Tensor:
        # x: (R, L, C), reference: (B, Lr, C) per reference element, context: (R, T, cross)
        n = self.norm1(x)
        if rows.uncond is None:
            x = self._with_reference(n, self._reference_kv(reference, n.dtype, cache), rows.elements).add_(x)
        elif rows.cond is None:
            x = self.attn1(n).add_(x)
        else:
            kv_ref = self._reference_kv(reference, n.dtype, cache)
            out = torch.empty_like(x)
            for sel, with_ref in ((rows.uncond, False), (rows.cond, True)):
                ns = _take(n, sel)
                a = self._with_reference(ns, kv_ref, rows.elements) if with_ref else self.attn1(ns)
                if isinstance(sel, slice):
                    torch.add(a, x[sel], out=out[sel])
                else:
                    out.index_copy_(0, sel, a + x.index_select(0, sel))
            x = out
        x = self.attn2(self.norm2(x), context).add_(x)  # residuals into the fresh outputs
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """``attentions.<k>``: GroupNorm -> 1x1 ``proj_in`` -> :class:`ReferenceAttentionBlock` -> 1x1 ``proj_out`` + x."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int):
        super().__init__()
        inner = heads * (channels // heads)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([ReferenceAttentionBlock(inner, heads, cross_attention_dim)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x, reference, context, rows: ReferenceRows, cache: dict | None = None):
        # x: (R, C, H, W), reference: (B, h*w, C) per reference element -> (R, C, H, W)
        r, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(r, h * w, inner)
        y = self.transformer_blocks[0](y, reference, context, rows, cache)
        y = y.reshape(r, h, w, inner).permute(0, 3, 1, 2)
        return self.proj_out(y).add_(x)


# ------------------------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class ClipConditioning:
    """What every layer of one Diffusion Net call needs besides its hidden states."""

    batch: int  # B (2 under CFG)
    frames: int  # F
    temb: torch.Tensor  # (B, 4 C0)
    context: torch.Tensor  # (B*F, 4, 768) identity tokens per row
    rows: ReferenceRows  # which rows attend to which reference tokens
    emotion: torch.Tensor  # (B,) or (1,)
    pooled_frames: int | None  # F when the resnet GroupNorms pool over frames, else None
    is_new_audio: bool
    update_past_memory: bool
    faithful_tiling: bool
    cache: dict | None  # what depends only on the reference features, kept across the calls of one clip


def _token_reference(feature: torch.Tensor, cond: ClipConditioning, h: int, w: int):
    """Transformer-level Reference Net feature ``(B*(1+N), h*w, C)`` -> (reference tokens per element ``(B, h*w, C)``
    (rows pick theirs through ``cond.rows``), motion frames ``(B*N, C, h, w)`` (made on demand))."""
    b = cond.batch
    rows, hw, c = feature.shape
    per = feature.view(b, rows // b, hw, c)
    return per[:, 0], lambda: per[:, 1:].reshape(-1, h, w, c).permute(0, 3, 1, 2)


def _map_motion(feature: torch.Tensor, cond: ClipConditioning) -> torch.Tensor:
    """Resnet-level Reference Net feature ``(B*(1+N), C, h, w)`` -> motion frames ``(B*N, C, h, w)``."""
    b = cond.batch
    rows = feature.shape[0]
    return feature.view(b, rows // b, *feature.shape[1:])[:, 1:].reshape(-1, *feature.shape[1:])


class _Layers(nn.Module):
    """Shared per-layer logic: resnet -> [transformer -> audio] -> [temporal]."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList | None
    audio_modules: nn.ModuleList | None
    motion_modules: nn.ModuleList

    def run_layer(self, i: int, x: torch.Tensor, feature: torch.Tensor, audio, cond: ClipConditioning,
                  resnet_first: bool = True):
        if resnet_first:
            x = self.resnets[i](x, cond.temb, cond.pooled_frames)
        h, w = x.shape[-2:]
        if self.attentions is not None:
            reference, motion = _token_reference(feature, cond, h, w)
            x = self.attentions[i](x, reference, cond.context, cond.rows, cond.cache)
            x, audio = self.audio_modules[i].forward_rows(x, audio, cond.emotion)
        else:
            motion = lambda: _map_motion(feature, cond)  # noqa: E731
        mm = self.motion_modules[i]
        if mm is not None:
            x = mm.forward_rows(x, lambda: motion().to(x.device), cond.batch, cond.is_new_audio,
                                cond.update_past_memory, cond.cache)
        return x, audio


def _motion_list(channels: int, count: int, enabled: bool, mcfg: MotionModuleConfig) -> nn.ModuleList:
    # the temporal modules' GroupNorm always has 32 groups (not the config's norm_num_groups), as released
    return nn.ModuleList([MemoryTemporalModule(channels, mcfg) if enabled else None for _ in range(count)])


class DownBlock3D(_Layers):
    """``down_blocks.<i>``: resnets (+ attentions, audio_modules) + motion_modules, optional downsampler."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, layers: int, heads: int,
                 cfg: DiffusionNetConfig, cross_attention: bool, add_downsample: bool, use_motion: bool):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList() if cross_attention else None
        self.audio_modules = nn.ModuleList() if cross_attention else None
        for i in range(layers):
            res_in = in_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock(res_in, out_channels, temb_channels, g, cfg.norm_eps))
            if cross_attention:
                self.attentions.append(SpatialTransformer(out_channels, heads, cfg.cross_attention_dim, g))
                self.audio_modules.append(AudioModule(out_channels, heads, res_in // heads, cfg.audio_attention_dim,
                                                      g, emotion_null_class=cfg.emotion_null_class))
        self.motion_modules = _motion_list(out_channels, layers, use_motion, cfg.motion)
        self.downsamplers = nn.ModuleList([Downsample(out_channels, cfg.downsample_padding)]) if add_downsample \
            else None

    def forward(self, x, features, audio, cond: ClipConditioning):
        skips = []
        for i in range(len(self.resnets)):
            x, audio = self.run_layer(i, x, features[i], audio, cond)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips, audio


class MidBlock3D(_Layers):
    """``mid_block``: resnets.0 -> attentions.0 -> audio_modules.0 -> motion_modules.0 -> resnets.1."""

    def __init__(self, channels: int, temb_channels: int, heads: int, cfg: DiffusionNetConfig):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, temb_channels, g, cfg.norm_eps,
                                                  cfg.mid_block_scale_factor) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialTransformer(channels, heads, cfg.cross_attention_dim, g)])
        self.audio_modules = nn.ModuleList([AudioModule(channels, heads, channels // heads, cfg.audio_attention_dim,
                                                        g, emotion_null_class=cfg.emotion_null_class)])
        self.motion_modules = _motion_list(channels, 1, True, cfg.motion)

    def forward(self, x, features, audio, cond: ClipConditioning):
        x = self.resnets[0](x, cond.temb, cond.pooled_frames)
        # the mid layer uses resnets[1] AFTER attention/audio/motion
        x, audio = self.run_layer(0, x, features[0], audio, cond, resnet_first=False)
        x = self.resnets[1](x, cond.temb, cond.pooled_frames)
        return x, audio


class UpBlock3D(_Layers):
    """``up_blocks.<i>``: skip concat -> resnet (+ attention, audio) + motion per layer, optional upsampler."""

    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, temb_channels: int, layers: int,
                 heads: int, cfg: DiffusionNetConfig, cross_attention: bool, add_upsample: bool, use_motion: bool,
                 is_final: bool):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList() if cross_attention else None
        self.audio_modules = nn.ModuleList() if cross_attention else None
        for i in range(layers):
            skip = in_channels if i == layers - 1 else out_channels
            res_in = prev_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock(res_in + skip, out_channels, temb_channels, g, cfg.norm_eps))
            if cross_attention:
                self.attentions.append(SpatialTransformer(out_channels, heads, cfg.cross_attention_dim, g))
                # audio width from the block's in_channels (all layers), as released
                self.audio_modules.append(AudioModule(out_channels, heads, in_channels // heads,
                                                      cfg.audio_attention_dim, g, is_final=is_final and i == layers - 1,
                                                      emotion_null_class=cfg.emotion_null_class))
        self.motion_modules = _motion_list(out_channels, layers, use_motion, cfg.motion)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x, skips, features, audio, cond: ClipConditioning, upsample_size=None):
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)
            x, audio = self.run_layer(i, x, features[i], audio, cond)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x, audio


# ------------------------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------------------------


class DiffusionNet(nn.Module):
    """MEMO Diffusion Net (see the module docstring). ``forward`` returns the velocity ``(B, 4, F, H, W)``."""

    def __init__(self, config: DiffusionNetConfig):
        super().__init__()
        cfg = self.config = config
        boc = list(cfg.block_out_channels)
        heads = cfg.heads
        temb_channels = boc[0] * 4
        g = cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb_channels)

        self.down_blocks = nn.ModuleList()
        out_ch = boc[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, boc[i]
            self.down_blocks.append(DownBlock3D(
                in_ch, out_ch, temb_channels, cfg.layers_per_block, heads[i], cfg,
                cross_attention=kind == "CrossAttnDownBlock3D", add_downsample=i < len(boc) - 1,
                use_motion=2 ** i in cfg.motion_module_resolutions))
        self.mid_block = MidBlock3D(boc[-1], temb_channels, heads[-1], cfg)

        self.up_blocks = nn.ModuleList()
        rev, rev_heads = boc[::-1], heads[::-1]
        out_ch = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev_ch, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(boc) - 1)]
            last = i == len(boc) - 1
            self.up_blocks.append(UpBlock3D(
                in_ch, prev_ch, out_ch, temb_channels, cfg.layers_per_block + 1, rev_heads[i], cfg,
                cross_attention=kind == "CrossAttnUpBlock3D", add_upsample=not last,
                use_motion=2 ** (len(boc) - 1 - i) in cfg.motion_module_resolutions, is_final=last))

        self.conv_norm_out = nn.GroupNorm(g, boc[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(boc[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def max_clip_frames(self) -> int | None:
        """Most frames one clip may have: the rows of the temporal positional tables (``pos_encoder.pe``, whose size
        comes from the checkpoint), or None when the network has none (the linear attention takes any length).

        Only the current clip's frames get a table row; the past frames never do, so their number is not limited.
        """
        rows = [layer.pos_encoder.pe.shape[1] for _, layer in self.memory_layers() if layer.pos_encoder is not None]
        return min(rows) if rows else None

    # ---- temporal memory -------------------------------------------------------------------------------------------
    def memory_layers(self) -> Iterator[tuple[str, MemoryLinearAttention]]:
        """``(name, layer)`` for every memory linear-attention layer (42 in the released model)."""
        for name, module in self.named_modules():
            if isinstance(module, MemoryLinearAttention):
                yield name, module

    def reset_memory(self) -> None:
        for _, layer in self.memory_layers():
            layer.reset_memory()

    def memory_to(self, device=None, dtype: torch.dtype | None = None) -> None:
        """Move every memory state (e.g. ``"cpu"`` between clips to free accelerator memory, back before the next)."""
        for _, layer in self.memory_layers():
            layer.memory.to(device, dtype)

    def memory_state(self) -> dict[str, MemoryState]:
        """A snapshot (clones) of every layer's memory, by layer name."""
        return {name: layer.memory.clone() for name, layer in self.memory_layers()}

    def load_memory_state(self, state: dict[str, MemoryState]) -> None:
        for name, layer in self.memory_layers():
            layer.memory = state[name].clone() if name in state else MemoryState()

    def memory_nbytes(self) -> int:
        return sum(layer.memory.nbytes() for _, layer in self.memory_layers())

    # ---- forward ---------------------------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, ref_features: dict, timestep, encoder_hidden_states: torch.Tensor,
                audio_embedding: torch.Tensor, audio_emotion: torch.Tensor, uc_mask: torch.Tensor | None = None,
                is_new_audio: bool = True, update_past_memory: bool = False,
                faithful_tiling: bool = True, reference_cache: dict | None = None,
                deep: DeepFeature | None = None) -> torch.Tensor:
        """``sample (B, 4, F, H, W)`` -> velocity ``(B, 4, F, H, W)``.

        ``ref_features``: ``{"down": [[per layer] per block], "mid": [[f]], "up": [...]}`` as returned by
        :class:`~.reference_net.ReferenceNet` for the ``B * (1 + N)`` reference batch (element-major).
        ``audio_embedding``: ``(B, F, T, A)``; ``audio_emotion``: ``(B,)`` or ``(1,)`` int labels.
        ``reference_cache``: a dict the caller keeps for the calls that share the same ``ref_features`` (and
        ``uc_mask``, batch and weights), e.g. the steps of one clip; what depends only on them (the reference tokens'
        keys/values, the temporal memory built from the motion frames alone) is computed once and reused. Same
        outputs; None computes everything every call.

        ``deep`` (opt-in feature reuse across steps, DeepCache-style): a full call stores what enters the last up
        block (hidden states and the audio stream) in it; a call with ``deep.reuse`` set runs only ``conv_in``, down
        block 0 (the last up block's skips) and the last up block, on the stored features (:meth:`reuses`). The
        temporal memory of the skipped blocks is left as it is, so a call that updates the memory
        (``update_past_memory``) always runs whole.
        """
        b, c, f, h, w = sample.shape
        dtype = self.dtype
        x = sample.to(dtype).transpose(1, 2).reshape(b * f, c, h, w)

        t = timesteps_for_batch(timestep, b, sample.device)
        t_emb = timestep_embedding(t, self.config.block_out_channels[0], self.config.flip_sin_to_cos,
                                   self.config.freq_shift).to(dtype)
        temb = self.time_embedding(t_emb)  # (B, 4 C0)

        context = encoder_hidden_states.to(dtype)
        if context.shape[0] != b * f:
            context = context.repeat_interleave(b * f // context.shape[0], dim=0)  # each element's set per frame

        uncond_rows = None
        if uc_mask is not None:
            uncond_rows = uc_mask.reshape(-1).to(torch.bool)
            if uncond_rows.numel() != b * f:  # official fallback: the first half of the rows is uncond
                half = (b * f) // 2
                uncond_rows = torch.cat([torch.ones(half, dtype=torch.bool), torch.zeros(half, dtype=torch.bool)])
        rows = None if reference_cache is None else reference_cache.get("rows")
        if rows is None:
            rows = ReferenceRows.build(uncond_rows, b, f, faithful_tiling, x.device)  # the call's one host sync
            if reference_cache is not None:
                reference_cache["rows"] = rows

        emotion = torch.as_tensor(audio_emotion, device=x.device).reshape(-1).long()
        audio = audio_embedding.to(dtype)
        if audio.dim() == 4:
            audio = audio.reshape(b * f, *audio.shape[2:])

        cond = ClipConditioning(batch=b, frames=f, temb=temb, context=context, rows=rows,
                                emotion=emotion, pooled_frames=None if self.config.use_inflated_groupnorm else f,
                                is_new_audio=bool(is_new_audio), update_past_memory=bool(update_past_memory),
                                faithful_tiling=faithful_tiling, cache=reference_cache)

        up_factor = 2 ** sum(1 for blk in self.up_blocks if blk.upsamplers is not None)
        forward_size = any(s % up_factor != 0 for s in (h, w))

        x = self.conv_in(x)
        if self.reuses(deep, update_past_memory):
            return self._shallow(x, deep, ref_features, audio, cond)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            x, block_skips, audio = block(x, ref_features["down"][i], audio, cond)
            skips.extend(block_skips)
        x, audio = self.mid_block(x, ref_features["mid"][0], audio, cond)
        last = len(self.up_blocks) - 1
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips = skips[-n:]
            del skips[-n:]
            size = skips[-1].shape[-2:] if (forward_size and i < last) else None
            if deep is not None and i == last:
                deep.store(x, audio)  # (B*F, C, h, w), (B*F, T, A)
            x, audio = block(x, block_skips, ref_features["up"][i], audio, cond, size)
        return self._out(x, cond)

    @staticmethod
    def reuses(deep: DeepFeature | None, update_past_memory: bool) -> bool:
        """Whether a call reuses the stored deep features (runs the shallow blocks only).

        The memory rule: the temporal memory changes only in a call that updates it from the past frames
        (``update_past_memory``; or ``is_new_audio``, which rebuilds it from the past frames alone). A reuse call
        leaves the skipped blocks' memory untouched, so an updating call always runs whole. A rebuilding call
        (``is_new_audio``, every step of the first clip) may reuse: the skipped blocks hold the state the full call
        that stored the features built from the same past frames, which is what the rebuild would give again (one
        :class:`DeepFeature` per clip keeps this true)."""
        return deep is not None and deep.reuse and deep.stored and not update_past_memory

    def _shallow(self, x: torch.Tensor, deep: DeepFeature, ref_features: dict, audio, cond: ClipConditioning):
        """A reuse call from ``conv_in``'s output ``x (B*F, C0, h, w)``: down block 0 gives the last up block's skips
        (with ``conv_in``), the deeper blocks are replaced by the stored input of the last up block and the audio
        stream there."""
        last = len(self.up_blocks) - 1
        n = len(self.up_blocks[last].resnets)
        _, block_skips, _ = self.down_blocks[0](x, ref_features["down"][0], audio, cond)
        skips = ([x] + block_skips)[:n]
        deep_x, deep_audio = deep.load(x.device, x.dtype)
        x, _ = self.up_blocks[last](deep_x, skips, ref_features["up"][last], deep_audio, cond, None)
        return self._out(x, cond)

    def _out(self, x: torch.Tensor, cond: ClipConditioning) -> torch.Tensor:
        """``(B*F, C0, H, W)`` rows -> velocity ``(B, 4, F, H, W)``."""
        x = F.silu(clip_group_norm(self.conv_norm_out, x, cond.pooled_frames))
        x = self.conv_out(x)
        _, c, h, w = x.shape
        return x.view(cond.batch, cond.frames, c, h, w).transpose(1, 2)
