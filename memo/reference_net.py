"""MEMO Reference Net.

The Reference Net is an SD1.5-shaped 2D UNet that returns features instead of an image: every transformer block gives
its post-``norm1`` tokens (the tokens entering self-attention) and every resnet-only level gives its resnet outputs.
The Diffusion Net consumes them per layer (frame 0 as extra self-attention keys/values, frames 1..N as the motion
frames of the temporal modules). The last up block's last transformer stops right after ``norm1``: it has no
attention, feed-forward or ``proj_out``; there is no upsampler after it and no ``conv_norm_out``/``conv_out``.

Module and parameter names follow the released checkpoint (diffusers naming), so the official
``reference_net/diffusion_pytorch_model.safetensors`` loads strictly.

Identity-token tiling quirk (faithful mode): the pipeline feeds ``[uncond, cond]`` identity tokens (2 sets) for a
reference batch of ``2 * (1 + N)`` rows; the original tiles them with a plain ``repeat``, so reference row ``j``
cross-attends to token set ``j % 2``. ``faithful_tiling=False`` gives each CFG half its own set instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers.attention import Attention
from ..layers.embeddings import TimestepEmbedding, timestep_embedding, timesteps_for_batch
from ..layers.feedforward import FeedForward
from .layers import (Downsample, ResnetBlock, Upsample, check_block_types, check_config_values, dataclass_from_config,
                     heads_per_block)


# ------------------------------------------------------------------------------------------------------------------
# Reference Net
# ------------------------------------------------------------------------------------------------------------------

_UNSUPPORTED_2D = {
    "class_embed_type": None, "addition_embed_type": None, "encoder_hid_dim_type": None,
    "time_embedding_type": ("positional",), "time_cond_proj_dim": None, "dual_cross_attention": False,
    "use_linear_projection": False, "only_cross_attention": False, "transformer_layers_per_block": (1, None),
    "resnet_time_scale_shift": "default", "act_fn": "silu", "center_input_sample": False,
    "num_class_embeds": None, "time_embedding_act_fn": None, "upcast_attention": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "attention_type": "default", "time_embedding_dim": None,
}


@dataclass
class ReferenceNetConfig:
    """The fields of ``reference_net/config.json`` the network depends on (SD1.5 values by default)."""

    in_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 2
    attention_head_dim: object = 8  # SD1.5 convention: used as the number of heads per block
    num_attention_heads: object = None  # overrides attention_head_dim when set (diffusers rule)
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    conv_in_kernel: int = 3
    mid_block_scale_factor: float = 1.0

    @classmethod
    def from_dict(cls, config: dict) -> "ReferenceNetConfig":
        check_config_values(config, _UNSUPPORTED_2D, "reference_net")
        cfg = dataclass_from_config(cls, config)
        check_block_types(cfg, ("CrossAttnDownBlock2D", "DownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"),
                          "reference_net")
        return cfg

    @property
    def heads(self) -> list[int]:
        return heads_per_block(self.num_attention_heads or self.attention_head_dim, len(self.block_out_channels))


class ReferenceTransformerBlock(nn.Module):
    """``norm1 -> attn1 (self) -> norm2 -> attn2 (identity tokens) -> norm3 -> ff``; returns the post-norm1 tokens
    as the reference feature. ``features_only``: only ``norm1`` exists (the network's last transformer)."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, features_only: bool = False):
        super().__init__()
        self.features_only = features_only
        self.norm1 = nn.LayerNorm(dim)
        if not features_only:
            self.attn1 = Attention(dim, heads, dim // heads)
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, dim // heads, context_dim=cross_attention_dim)
            self.norm3 = nn.LayerNorm(dim)
            self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        # x: (N, L, C), context: (N, T, cross_dim) -> (x (N, L, C) or None, feature (N, L, C))
        feature = self.norm1(x)
        if self.features_only:
            return None, feature
        x = self.attn1(feature) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return x, feature


class ReferenceTransformer2D(nn.Module):
    """GroupNorm -> 1x1 ``proj_in`` -> one transformer block -> 1x1 ``proj_out`` + residual (no proj_out if final)."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int, features_only: bool = False):
        super().__init__()
        self.features_only = features_only
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, heads * (channels // heads), 1)
        self.transformer_blocks = nn.ModuleList(
            [ReferenceTransformerBlock(heads * (channels // heads), heads, cross_attention_dim, features_only)])
        if not features_only:
            self.proj_out = nn.Conv2d(heads * (channels // heads), channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        # x: (N, C, H, W) -> (out (N, C, H, W) or None, feature (N, H*W, inner))
        n, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(n, h * w, inner)
        y, feature = self.transformer_blocks[0](y, context)
        if y is None:
            return None, feature
        y = y.reshape(n, h, w, inner).permute(0, 3, 1, 2)
        return self.proj_out(y) + x, feature


class ReferenceDownBlock(nn.Module):
    """Resnets (+ transformers when ``cross_attention``) and an optional stride-2 downsampler."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, layers: int, heads: int,
                 cfg: ReferenceNetConfig, cross_attention: bool, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, cfg.norm_num_groups,
                        cfg.norm_eps) for i in range(layers)])
        if cross_attention:
            self.attentions = nn.ModuleList([
                ReferenceTransformer2D(out_channels, heads, cfg.cross_attention_dim, cfg.norm_num_groups)
                for _ in range(layers)])
        else:
            self.attentions = None
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample(out_channels, cfg.downsample_padding)])
        else:
            self.downsamplers = None

    def forward(self, x, temb, context):
        skips, features = [], []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x, feature = self.attentions[i](x, context)
            else:
                feature = x
            features.append(feature)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips, features


class ReferenceMidBlock(nn.Module):
    """``resnets.0 -> attentions.0 -> resnets.1``."""

    def __init__(self, channels: int, temb_channels: int, heads: int, cfg: ReferenceNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock(channels, channels, temb_channels, cfg.norm_num_groups, cfg.norm_eps,
                        cfg.mid_block_scale_factor) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [ReferenceTransformer2D(channels, heads, cfg.cross_attention_dim, cfg.norm_num_groups)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x, feature = self.attentions[0](x, context)
        x = self.resnets[1](x, temb)
        return x, [feature]


class ReferenceUpBlock(nn.Module):
    """Skip concat -> resnet (+ transformer) per layer, then an optional upsampler. ``is_final``: the last layer's
    transformer stops after norm1 and the block returns no hidden states."""

    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, temb_channels: int, layers: int,
                 heads: int, cfg: ReferenceNetConfig, cross_attention: bool, add_upsample: bool, is_final: bool):
        super().__init__()
        self.is_final = is_final and cross_attention
        resnets = []
        for i in range(layers):
            skip = in_channels if i == layers - 1 else out_channels
            res_in = prev_channels if i == 0 else out_channels
            resnets.append(ResnetBlock(res_in + skip, out_channels, temb_channels, cfg.norm_num_groups, cfg.norm_eps))
        self.resnets = nn.ModuleList(resnets)
        if cross_attention:
            self.attentions = nn.ModuleList([
                ReferenceTransformer2D(out_channels, heads, cfg.cross_attention_dim, cfg.norm_num_groups,
                                       features_only=self.is_final and i == layers - 1) for i in range(layers)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample and not self.is_final else None

    def forward(self, x, skips, temb, context, upsample_size=None):
        features = []
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)
            x = resnet(x, temb)
            if self.attentions is not None:
                x, feature = self.attentions[i](x, context)
            else:
                feature = x
            features.append(feature)
        if self.upsamplers is not None and x is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x, features


class ReferenceNet(nn.Module):
    """MEMO Reference Net: latents ``(N, 4, h, w)`` -> ``{"down": [[f, ...], ...], "mid": [[f]], "up": [...]}``.

    Transformer levels give ``(N, h*w, C)`` post-norm1 tokens, resnet-only levels ``(N, C, h, w)`` resnet outputs.
    """

    def __init__(self, config: ReferenceNetConfig):
        super().__init__()
        cfg = self.config = config
        boc = list(cfg.block_out_channels)
        heads = cfg.heads
        temb_channels = boc[0] * 4
        pad = (cfg.conv_in_kernel - 1) // 2
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], cfg.conv_in_kernel, padding=pad)
        self.time_embedding = TimestepEmbedding(boc[0], temb_channels)

        self.down_blocks = nn.ModuleList()
        out_ch = boc[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, boc[i]
            self.down_blocks.append(ReferenceDownBlock(
                in_ch, out_ch, temb_channels, cfg.layers_per_block, heads[i], cfg,
                cross_attention=kind == "CrossAttnDownBlock2D", add_downsample=i < len(boc) - 1))
        self.mid_block = ReferenceMidBlock(boc[-1], temb_channels, heads[-1], cfg)

        self.up_blocks = nn.ModuleList()
        rev, rev_heads = boc[::-1], heads[::-1]
        out_ch = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev_ch, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(boc) - 1)]
            last = i == len(boc) - 1
            self.up_blocks.append(ReferenceUpBlock(
                in_ch, prev_ch, out_ch, temb_channels, cfg.layers_per_block + 1, rev_heads[i], cfg,
                cross_attention=kind == "CrossAttnUpBlock2D", add_upsample=not last, is_final=last))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                faithful_tiling: bool = True) -> dict[str, list[list[torch.Tensor]]]:
        """``sample (N, 4, h, w)``, ``timestep`` (0 in the pipeline), ``encoder_hidden_states (S, T, 768)`` with ``S``
        dividing ``N`` (S = N: one token set per row). ``faithful_tiling`` reproduces the official plain ``repeat``
        (row j -> set j % S); otherwise each set covers a consecutive run of N / S rows."""
        n = sample.shape[0]
        context = encoder_hidden_states.to(sample.dtype)
        if context.shape[0] != n:
            reps = n // context.shape[0]
            context = context.repeat(reps, 1, 1) if faithful_tiling else context.repeat_interleave(reps, dim=0)

        t = timesteps_for_batch(timestep, n, sample.device)
        t_emb = timestep_embedding(t, self.config.block_out_channels[0], self.config.flip_sin_to_cos,
                                   self.config.freq_shift).to(sample.dtype)
        temb = self.time_embedding(t_emb)  # (N, 4 C0)

        up_factor = 2 ** sum(1 for b in self.up_blocks if b.upsamplers is not None)
        forward_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        x = self.conv_in(sample)
        skips = [x]
        features = {"down": [], "mid": [], "up": []}
        for block in self.down_blocks:
            x, block_skips, block_features = block(x, temb, context)
            skips.extend(block_skips)
            features["down"].append(block_features)
        x, mid_features = self.mid_block(x, temb, context)
        features["mid"].append(mid_features)
        for i, block in enumerate(self.up_blocks):
            block_skips = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            size = skips[-1].shape[-2:] if (forward_size and i < len(self.up_blocks) - 1) else None
            x, block_features = block(x, block_skips, temb, context, size)
            features["up"].append(block_features)
        return features
