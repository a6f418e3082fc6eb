"""HunyuanPortrait denoiser: the SVD spatio-temporal UNet with the motion (IP) branch, and its ``unet.pth`` loader.

Module and key layout are those of diffusers ``UNetSpatioTemporalConditionModel`` (the SVD-xt config by default) plus
one :class:`~.attention.DecoupledCrossAttnProcessor` under every ``attn2`` (``...attn2.processor.to_{k,v}_ip.0``).
The resnets and transformer blocks are diffusers' (``SpatioTemporalResBlock``, ``BasicTransformerBlock``,
``TemporalBasicTransformerBlock``); what differs from stock SVD:

* the context is a pair ``(appearance, [motion])`` (per-frame tokens, 64 x 1024 each in the release); appearance goes
  through ``to_k``/``to_v``, motion through the IP projections (:mod:`.attention`);
* the temporal transformer block's context is each context **averaged over the frames of the window** (stock SVD
  takes the first frame's);
* a pose feature map (pose guider output) is added to the ``conv_in`` output;
* ``image_only_indicator`` is zero (mixing weight ``sigmoid(mix_factor)``), frame positions are ``0..F-1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..loaders.checkpoint import config_dict, load_file_with_policy
from ..loaders.policy import LoadPolicy
from .attention import install_motion_processors, split_context

UNET_POLICY = LoadPolicy("HunyuanPortrait UNet (hyportrait/unet.pth)", unwrap=("state_dict",),
                         strip_prefixes=("module.",))

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"


# ---------------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------------
def _per_level(value, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} levels")
        return tuple(value)
    return (value,) * n


@dataclass
class UNetConfig:
    """The diffusers UNet config fields that shape the network (defaults: SVD-xt) plus the motion branch settings
    (``motion_branches`` = ``len(num_adapter_embeds)`` = 1, ``motion_scale`` = ``ip_motion_scale`` = 1.0)."""

    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    up_block_types: tuple = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    block_out_channels: tuple = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple = 2
    cross_attention_dim: int | tuple = 1024
    transformer_layers_per_block: int | tuple = 1
    num_attention_heads: int | tuple = (5, 10, 20, 20)
    num_frames: int = 25
    motion_branches: int = 1
    motion_scale: float = 1.0
    ignored: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
                     "cross_attention_dim", "transformer_layers_per_block", "num_attention_heads"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        for t in self.down_block_types:
            if t not in (CROSS_DOWN, PLAIN_DOWN):
                raise ValueError(f"unknown down block type {t!r}")
        for t in self.up_block_types:
            if t not in (CROSS_UP, PLAIN_UP):
                raise ValueError(f"unknown up block type {t!r}")
        for name in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block",
                     "num_attention_heads"):
            _per_level(getattr(self, name), n, name)

    def level(self, name: str) -> tuple:
        return _per_level(getattr(self, name), len(self.block_out_channels), name)

    @classmethod
    def from_dict(cls, config: dict) -> "UNetConfig":
        """From a diffusers ``config.json`` dict; bookkeeping (``_*``) and unused entries (``sample_size``) are kept
        aside in ``ignored``."""
        known = {f.name for f in fields(cls)} - {"ignored"}
        values = {k: v for k, v in config.items() if k in known}
        ignored = {k: v for k, v in config.items() if k not in known}
        return cls(**values, ignored=ignored)


def unet_config(config=None) -> UNetConfig:
    """A :class:`UNetConfig` from ``None`` (SVD-xt, the official default), a dict, a ``config.json`` path or a folder
    holding one (``<folder>/config.json`` or ``<root>/unet/config.json``)."""
    if isinstance(config, UNetConfig):
        return config
    raw, source = config_dict(config, "svd_xt_unet", subfolder="unet")
    try:
        return UNetConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------------
# transformer
# ---------------------------------------------------------------------------------------------------------------------
def window_mean(context: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """(B*F, N, C) per-frame context -> (B, N, C) mean over the window's frames; (B, N, C) is returned as is."""
    if context.shape[0] == batch:
        return context
    if context.shape[0] != batch * frames:
        raise ValueError(f"context batch {context.shape[0]} is neither {batch} nor {batch} x {frames} frames")
    return context.reshape(batch, frames, *context.shape[1:]).mean(dim=1)


class SpatioTemporalTransformer(nn.Module):
    """``TransformerSpatioTemporalModel`` layout: spatial block per frame, temporal block per pixel, mixed by
    ``time_mixer``; the temporal cross-attention sees the window-mean contexts."""

    def __init__(self, channels: int, heads: int, head_dim: int, layers: int = 1, cross_attention_dim: int = 1024):
        super().__init__()
        from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import AlphaBlender

        inner = heads * head_dim
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, head_dim, cross_attention_dim=cross_attention_dim)
             for _ in range(layers)])
        self.temporal_transformer_blocks = nn.ModuleList(
            [TemporalBasicTransformerBlock(inner, inner, heads, head_dim, cross_attention_dim=cross_attention_dim)
             for _ in range(layers)])
        self.time_pos_embed = TimestepEmbedding(channels, channels * 4, out_dim=channels)
        self.time_proj = Timesteps(channels, True, 0)
        self.time_mixer = AlphaBlender(alpha=0.5, merge_strategy="learned_with_images")
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states, num_frames: int) -> torch.Tensor:
        # hidden_states (B*F, C, H, W); contexts (B*F or B, N, Cctx) -> (B*F, C, H, W)
        bf, c, h, w = hidden_states.shape
        batch = bf // num_frames
        appearance, motions = split_context(encoder_hidden_states)
        temporal_context = (window_mean(appearance, batch, num_frames),
                            [window_mean(m, batch, num_frames) for m in motions])

        residual = hidden_states
        x = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        x = self.proj_in(x)

        positions = torch.arange(num_frames, device=x.device).repeat(batch)
        frame_emb = self.time_pos_embed(self.time_proj(positions).to(x.dtype))[:, None, :]  # (B*F, 1, C)
        indicator = torch.zeros(batch, num_frames, dtype=x.dtype, device=x.device)

        for block, temporal in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            x = block(x, encoder_hidden_states=encoder_hidden_states)
            x_t = temporal(x + frame_emb, num_frames=num_frames, encoder_hidden_states=temporal_context)
            x = self.time_mixer(x_spatial=x, x_temporal=x_t, image_only_indicator=indicator)

        x = self.proj_out(x)
        x = x.reshape(bf, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return x + residual


# ---------------------------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------------------------
def _resblock(cin: int, cout: int, temb: int, eps: float):
    from diffusers.models.resnet import SpatioTemporalResBlock

    return SpatioTemporalResBlock(in_channels=cin, out_channels=cout, temb_channels=temb, eps=eps)


def _transformer(channels: int, heads: int, layers: int, cross_attention_dim: int) -> SpatioTemporalTransformer:
    return SpatioTemporalTransformer(channels, heads, channels // heads, layers, cross_attention_dim)


class DownBlock(nn.Module):
    """``{CrossAttn,}DownBlockSpatioTemporal``: resnets (+ transformers), optional stride-2 conv."""

    def __init__(self, cin: int, cout: int, temb: int, layers: int, add_downsample: bool, cross: bool,
                 heads: int = 1, transformer_layers: int = 1, cross_attention_dim: int = 1024):
        super().__init__()
        from diffusers.models.resnet import Downsample2D

        eps = 1e-6 if cross else 1e-5
        self.has_cross_attention = cross
        self.resnets = nn.ModuleList([_resblock(cin if i == 0 else cout, cout, temb, eps) for i in range(layers)])
        if cross:
            self.attentions = nn.ModuleList(
                [_transformer(cout, heads, transformer_layers, cross_attention_dim) for _ in range(layers)])
        self.downsamplers = (nn.ModuleList([Downsample2D(cout, use_conv=True, out_channels=cout, padding=1,
                                                         name="op")]) if add_downsample else None)

    def forward(self, x, temb, context, num_frames, indicator):
        skips = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, image_only_indicator=indicator)
            if self.has_cross_attention:
                x = self.attentions[i](x, context, num_frames)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class MidBlock(nn.Module):
    """``UNetMidBlockSpatioTemporal``: resnet, then (transformer, resnet)."""

    def __init__(self, channels: int, temb: int, heads: int, transformer_layers: int, cross_attention_dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([_resblock(channels, channels, temb, 1e-5) for _ in range(2)])
        self.attentions = nn.ModuleList([_transformer(channels, heads, transformer_layers, cross_attention_dim)])

    def forward(self, x, temb, context, num_frames, indicator):
        x = self.resnets[0](x, temb, image_only_indicator=indicator)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = attn(x, context, num_frames)
            x = resnet(x, temb, image_only_indicator=indicator)
        return x


class UpBlock(nn.Module):
    """``{CrossAttn,}UpBlockSpatioTemporal``: resnets on [x, skip] (+ transformers), optional 2x upsampling conv."""

    def __init__(self, cin: int, prev: int, cout: int, temb: int, layers: int, add_upsample: bool, cross: bool,
                 heads: int = 1, transformer_layers: int = 1, cross_attention_dim: int = 1024):
        super().__init__()
        from diffusers.models.resnet import Upsample2D

        self.has_cross_attention = cross
        resnets = []
        for i in range(layers):
            skip = cin if i == layers - 1 else cout
            resnets.append(_resblock((prev if i == 0 else cout) + skip, cout, temb, 1e-5))
        self.resnets = nn.ModuleList(resnets)
        if cross:
            self.attentions = nn.ModuleList(
                [_transformer(cout, heads, transformer_layers, cross_attention_dim) for _ in range(layers)])
        self.upsamplers = (nn.ModuleList([Upsample2D(cout, use_conv=True, out_channels=cout)])
                           if add_upsample else None)

    def forward(self, x, skips, temb, context, num_frames, indicator):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1]], dim=1)
            skips = skips[:-1]
            x = resnet(x, temb, image_only_indicator=indicator)
            if self.has_cross_attention:
                x = self.attentions[i](x, context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


# ---------------------------------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------------------------------
class PortraitUNet(nn.Module):
    """The HunyuanPortrait denoiser (``UNet3DConditionSVDModel`` + IP processors in the original)."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        cfg = self.config = config or UNetConfig()
        ch = cfg.block_out_channels
        n = len(ch)
        temb = ch[0] * 4
        heads, layers = cfg.level("num_attention_heads"), cfg.level("layers_per_block")
        xdim, tlayers = cfg.level("cross_attention_dim"), cfg.level("transformer_layers_per_block")

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.add_time_proj = Timesteps(cfg.addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)

        self.down_blocks = nn.ModuleList()
        cout = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            cin, cout = cout, ch[i]
            self.down_blocks.append(DownBlock(cin, cout, temb, layers[i], i < n - 1, kind == CROSS_DOWN, heads[i],
                                              tlayers[i], xdim[i]))
        self.mid_block = MidBlock(ch[-1], temb, heads[-1], tlayers[-1], xdim[-1])

        rch, rheads, rlayers = ch[::-1], heads[::-1], layers[::-1]
        rxdim, rtlayers = xdim[::-1], tlayers[::-1]
        self.up_blocks = nn.ModuleList()
        cout = rch[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev, cout, cin = cout, rch[i], rch[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(cin, prev, cout, temb, rlayers[i] + 1, i < n - 1, kind == CROSS_UP,
                                          rheads[i], rtlayers[i], rxdim[i]))

        self.conv_norm_out = nn.GroupNorm(32, ch[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        install_motion_processors(self, cfg.motion_branches, cfg.motion_scale)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states, added_time_ids: torch.Tensor,
                pose_features: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, F, Cin, H, W); timestep scalar or (B,) (t = 0.25 ln sigma); ``encoder_hidden_states`` =
        ``(appearance, [motion])``, each (B*F, N, Cctx) per frame (or (B, N, Cctx) per video); added_time_ids (B, 3)
        = [fps, motion bucket, noise aug]; pose_features (B, F, C0, H, W) or broadcastable to (B*F, C0, H, W)
        -> v-prediction (B, F, Cout, H, W)."""
        b, f = sample.shape[:2]
        t = timestep if torch.is_tensor(timestep) else torch.tensor(
            [timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64)
        t = t.reshape(-1).to(sample.device).expand(b)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        ids = self.add_time_proj(added_time_ids.flatten()).reshape(b, -1).to(emb.dtype)
        emb = (emb + self.add_embedding(ids)).repeat_interleave(f, dim=0)  # (B*F, temb)

        x = self.conv_in(sample.flatten(0, 1))  # (B*F, C0, H, W)
        if pose_features is not None:
            x = x + (pose_features.flatten(0, 1) if pose_features.ndim == 5 else pose_features)
        indicator = torch.zeros(b, f, dtype=x.dtype, device=x.device)
        ctx = encoder_hidden_states

        skips = (x,)
        for block in self.down_blocks:
            x, res = block(x, emb, ctx, f, indicator)
            skips += res
        x = self.mid_block(x, emb, ctx, f, indicator)
        for block in self.up_blocks:
            k = len(block.resnets)
            x = block(x, skips[-k:], emb, ctx, f, indicator)
            skips = skips[:-k]

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(b, f, *x.shape[1:])


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------
def load_unet(path: str | Path, config=None, dtype: torch.dtype | None = None) -> PortraitUNet:
    """``hyportrait/unet.pth`` (fp32 pickled flat state dict, read with ``weights_only``) into a :class:`PortraitUNet`
    built from ``config`` (default SVD-xt; a dict, a ``config.json`` path or a folder) under :data:`UNET_POLICY`."""
    cfg = unet_config(config)
    model = load_file_with_policy(path, lambda: PortraitUNet(cfg), UNET_POLICY, dtype=dtype)
    return model.requires_grad_(False)


__all__ = ["DownBlock", "MidBlock", "PortraitUNet", "SpatioTemporalTransformer", "UNET_POLICY", "UNetConfig", "UpBlock",
           "load_unet", "unet_config", "window_mean"]
