"""HelloMeme control networks: pose image + expression -> per-level control residuals of the SD1.5 UNet.

=====================  ==========================================  ===================================================
released class         repository                                  module here
=====================  ==========================================  ===================================================
HMControlNet           songkey/hm_control (v1, ARKit + face parts)  :class:`KnittedControlNet` (``down_i``)
HMControlNet2          songkey/hm_control2 (v1, PD-FGC)             :class:`KnittedControlNet` (``down2_i``)
HMV2ControlNet         songkey/hm2_control (v2, ARKit + face parts) :class:`KnittedControlNet` (``up_v2_j``)
HMV2ControlNet2        songkey/hm2_control2 (v2, PD-FGC)            :class:`KnittedControlNet` (``up2_v2_j``)
HMV3ControlNet         songkey/hm3_control_mix (v3, either)         :class:`KnittedControlNet` (``up3_j``, ``down3_i``)
HMControlNetBase       songkey/hm_control_base (v4)                 :class:`ControlEncoder` (stored position tables)
HM4SD15ControlProj     songkey/hm4_control_proj (v4)                :class:`ControlProjector` (plain 3x3 convs)
HM5ControlNetBase      songkey/hm5_control_base (v5, v5b, v5c)      :class:`ControlEncoder`
HM5SD15ControlProj     songkey/hm5_control_proj, hm5c_control_proj  :class:`ControlProjector` (conv + knitted attn)
=====================  ==========================================  ===================================================

* :class:`KnittedControlNet` (v1-v3): the pose image resized to 1/``scale_factor``, ``conv_in`` and a chain of
  :class:`KnittedDownCrossAttention` blocks (``SKCrossAttention``: stride-2 residual block, then row / column
  cross-attention to the expression tokens) whose outputs are the control residuals, named after the UNet insertion
  point exactly as the original returns them (see :data:`RELEASED_CONTROL_NETS`).
* :class:`ControlEncoder` (v4 ``HMControlNetBase``, v5 ``HM5ControlNetBase``): the pose image resized to 1/8,
  expression coefficients encoded into 16 context tokens, and a small knitted U-Net (:class:`KnittedControlUNet`,
  ``ctrl_attn``) giving ``feat_0..3`` (B, C, F, h, w) at 1/64 .. 1/8 of the image.
* :class:`ControlProjector` (v4 ``HM4SD15ControlProj``: one :class:`FrameConv` per map; v5 ``HM5SD15ControlProj``: one
  :class:`FeatureProjector` (3x3 conv + knitted self-attention) per map) from ``feat_i`` to the SD1.5 UNet insertion
  points ``down3_0..3`` (after each down block) and ``up3_0..3`` (before each up block).

Building blocks: :class:`ResidualDownBlock` (a ResNet BasicBlock with InstanceNorm, torchvision keys) and
:class:`KnittedCrossAttention` (``STKCrossAttention`` v4 with stored position tables, ``STKCrossAttentionV5`` with
computed ones: row then column cross-attention to the context tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import Attention
from ..layers.embeddings import SinCosHalves, SinusoidalTable, TimestepEmbedding, coefficient_tokens
from ..layers.feedforward import FeedForward
from .knitting import KnittedAttention

ARKIT_SCALE = 500.0  # ARKit blendshape coefficients (in [0, 1]) are multiplied by this before encoding
PDFGC_SCALE = 20.0  # PD-FGC motion codes are multiplied by this before encoding
ARKIT_COEFFICIENTS = 51  # ARKit blendshapes per frame
FACE_PARTS = 3  # CLIP image embeddings of the two eye regions and the mouth
PDFGC_COEFFICIENTS = 548  # PD-FGC motion code: eye 6 | emotion 30 | mouth 512


class ResidualDownBlock(nn.Module):
    """ResNet basic block (torchvision ``BasicBlock`` keys) with parameter-free InstanceNorm, stride 2 by default.

    ``relu(IN(conv2(relu(IN(conv1(x))))) + downsample(x))`` with ``downsample = [1x1 conv stride s, IN, SiLU]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm2d(out_channels)
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.InstanceNorm2d(out_channels),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.downsample(x))


def row_column_cross_attention(x: torch.Tensor, context: torch.Tensor, positions: nn.Module,
                               row: tuple[nn.Module, nn.Module], column: tuple[nn.Module, nn.Module]) -> torch.Tensor:
    """The knitted cross-attention of the control blocks: row stage, then column stage, no residual.

    x: (N, h, w, c) tokens of N maps; context: (N, T, D), its own positions already added; ``positions`` has a
    ``table(length, like)``; ``row`` / ``column``: (norm, attention) pairs. Every query token attends to its map's
    context only, so the row / column grouping of the original matters only through the positions: the row stage adds
    the position along the width, the column stage (on the row stage's output) the position along the height.
    Returns (N, h*w, c).
    """
    n, h, w, c = x.shape
    x = x + positions.table(w, x)[None, None]
    x = row[1](row[0](x.reshape(n, h * w, c)), context).reshape(n, h, w, c)
    x = x + positions.table(h, x)[None, :, None]
    return column[1](column[0](x.reshape(n, h * w, c)), context)


class KnittedCrossAttention(nn.Module):
    """Row then column cross-attention of a feature map to context tokens (``STKCrossAttentionV5``).

    ``conv_in`` (3x3, in -> mid), then ``attn1`` (each row's tokens, positions along the width) and ``attn2`` (each
    column's tokens, positions along the height) attend to the context (plus its own position table), each with
    the shared ``norm`` before it and no residual; then ``norm(ff(x))`` (the same LayerNorm AFTER the GEGLU
    feed-forward, inner 16*mid) and ``proj`` (3x3, mid -> in).

    Args:
        channel_in, channel_mid: channels outside / inside.
        heads: attention heads (dim_head = mid // heads).
        cross_attention_dim: width of the context tokens.
        position_table_lengths: None (v5): computed ``[sin | cos]`` positions. ``(features, context)`` lengths (v4:
            512, 1024): stored tables ``pos_embed.pe`` / ``pos_embed_hidden.pe``.
    """

    def __init__(self, channel_in: int, channel_mid: int, heads: int = 8, cross_attention_dim: int = 320,
                 position_table_lengths: tuple[int, int] | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.conv_in = nn.Conv2d(channel_in, channel_mid, kernel_size=3, padding=1)
        if position_table_lengths:
            self.pos_embed = SinusoidalTable(channel_mid, position_table_lengths[0])
            self.pos_embed_hidden = SinusoidalTable(cross_attention_dim, position_table_lengths[1])
        else:
            self._positions = SinCosHalves()
        self.norm = nn.LayerNorm(channel_mid, eps=norm_eps)
        self.attn1 = Attention(channel_mid, heads, channel_mid // heads, context_dim=cross_attention_dim)
        self.attn2 = Attention(channel_mid, heads, channel_mid // heads, context_dim=cross_attention_dim)
        self.ff = FeedForward(channel_mid, inner_dim=channel_mid * 16)
        self.proj = nn.Conv2d(channel_mid, channel_in, kernel_size=3, padding=1)

    def _tables(self):
        if hasattr(self, "pos_embed"):
            return self.pos_embed, self.pos_embed_hidden
        return self._positions, self._positions

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (b, f, C_in, h, w); context: (b, f, T, cross_attention_dim) -> (b, f, C_in, h, w)
        b, f, c_in, h, w = x.shape
        x = self.conv_in(x.reshape(b * f, c_in, h, w))
        c = x.shape[1]
        positions, context_positions = self._tables()
        context = context.reshape(b * f, *context.shape[2:])
        context = context + context_positions.table(context.shape[1], context)[None]  # (b*f, T, D)

        tokens = row_column_cross_attention(x.permute(0, 2, 3, 1), context, positions,
                                            (self.norm, self.attn1), (self.norm, self.attn2))  # (b*f, h*w, c)
        tokens = self.norm(self.ff(tokens))
        out = self.proj(tokens.reshape(b * f, h, w, c).permute(0, 3, 1, 2).contiguous())
        return out.reshape(b, f, c_in, h, w)


class KnittedDownCrossAttention(nn.Module):
    """Stride-2 residual block, then knitted cross-attention to the expression tokens (``SKCrossAttention``, the
    blocks of the v1-v3 control networks).

    ``conv`` (:class:`ResidualDownBlock`, in -> out), then ``attn1`` (rows; ``norm1`` before it) and ``attn2``
    (columns; ``norm2``) attend to the context plus its stored position table ``pos_embed_hidden``, the features
    carry the stored table ``pos_embed``; then the GEGLU feed-forward ``ff`` (inner 2*out, no norm after it) and
    ``proj`` (3x3, out -> out). No residual anywhere: the block's output is the projected attention path.

    Args:
        channel_in, channel_out: channels in / out.
        heads: attention heads (dim_head = out // heads).
        cross_attention_dim: width of the context tokens.
        position_table_lengths: (features, context) positions of the stored tables (released: 64 and 64 or 1024).
    """

    def __init__(self, channel_in: int, channel_out: int, heads: int = 8, cross_attention_dim: int = 320,
                 position_table_lengths: tuple[int, int] = (64, 64), norm_eps: float = 1e-5):
        super().__init__()
        self.conv = ResidualDownBlock(channel_in, channel_out)
        self.pos_embed = SinusoidalTable(channel_out, position_table_lengths[0])
        self.pos_embed_hidden = SinusoidalTable(cross_attention_dim, position_table_lengths[1])
        self.norm1 = nn.LayerNorm(channel_out, eps=norm_eps)
        self.attn1 = Attention(channel_out, heads, channel_out // heads, context_dim=cross_attention_dim)
        self.norm2 = nn.LayerNorm(channel_out, eps=norm_eps)
        self.attn2 = Attention(channel_out, heads, channel_out // heads, context_dim=cross_attention_dim)
        self.ff = FeedForward(channel_out, inner_dim=channel_out * 2)
        self.proj = nn.Conv2d(channel_out, channel_out, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W); context: (N, T, cross_attention_dim) -> (N, C_out, ceil(H/2), ceil(W/2))
        x = self.conv(x)
        n, c, h, w = x.shape
        context = context + self.pos_embed_hidden.table(context.shape[1], context)[None]
        tokens = row_column_cross_attention(x.permute(0, 2, 3, 1), context, self.pos_embed,
                                            (self.norm1, self.attn1), (self.norm2, self.attn2))  # (N, h*w, c)
        tokens = self.ff(tokens)
        return self.proj(tokens.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous())


FACE_EMBED_DIM = 1024  # width of one CLIP ViT-H face-part embedding
EXPRESSIONS = ("arkit", "pdfgc", "either")
SD15_DOWN_LEVELS = 4  # down blocks of the SD1.5 UNet (insertion points down3_0..3 of v3+)


@dataclass
class KnittedControlNetConfig:
    """The v1-v3 control networks (``HMControlNet``, ``HMControlNet2``, ``HMV2ControlNet``, ``HMV2ControlNet2``,
    ``HMV3ControlNet``). The first five fields are the original constructor's (the v1 ``config.json`` holds them; the
    v2 / v3 ones hold only the class name); the others are fixed per released class (:data:`RELEASED_CONTROL_NETS`).

    * ``block_out_channels``: ``conv_in`` width, then one :class:`KnittedDownCrossAttention` per further entry.
    * ``expression``: ``arkit`` (ARKit coefficients + CLIP face parts, ``exp_proj`` / ``face_proj``), ``pdfgc``
      (PD-FGC motion code, ``emo_proj``) or ``either`` (both sets of weights; ARKit when ``drive_coeff`` AND
      ``face_parts`` are given, else PD-FGC).
    * ``position_table_lengths``: positions of the blocks' stored tables (features, context).
    * ``output_prefix``, ``outputs_from_bottom``: block i's output is ``f"{prefix}{i}"`` (v1, after down block i) or
      ``f"{prefix}{n-1-i}"`` (v2 / v3, before up block n-1-i).
    * ``down_projection_channels`` (v3): 1x1 convs ``conv_up{m-k}_down{k}`` (no bias) map the output for up block
      m-k (m = len) to down insertion point ``down3_k``; the remaining SD1.5 down points take the bottom output
      itself (v3: ``down3_2 = down3_3 = up3_0``).
    * ``embedding_channels`` is stored in the v1 configs but unused.
    """

    embedding_channels: int = 1280
    input_channels: int = 3
    scale_factor: int = 8
    cross_attention_dim: int = 320
    block_out_channels: tuple[int, ...] = (128, 320, 640, 1280)
    expression: str = "arkit"
    position_table_lengths: tuple[int, int] = (64, 64)
    output_prefix: str = "down_"
    outputs_from_bottom: bool = False
    down_projection_channels: tuple[int, ...] = ()
    down_prefix: str = "down3_"
    heads: int = 8


_V2_WIDTHS = dict(scale_factor=4, block_out_channels=(128, 640, 1280, 1280, 1280), position_table_lengths=(64, 1024),
                  outputs_from_bottom=True)

# released class -> the fields its code fixes (the constructor defaults where config.json is class-name only)
RELEASED_CONTROL_NETS: dict[str, dict] = {
    "HMControlNet": dict(expression="arkit", position_table_lengths=(64, 64), output_prefix="down_"),
    "HMControlNet2": dict(expression="pdfgc", position_table_lengths=(64, 1024), output_prefix="down2_"),
    "HMV2ControlNet": dict(_V2_WIDTHS, expression="arkit", output_prefix="up_v2_"),
    "HMV2ControlNet2": dict(_V2_WIDTHS, expression="pdfgc", output_prefix="up2_v2_"),
    "HMV3ControlNet": dict(_V2_WIDTHS, expression="either", output_prefix="up3_", down_projection_channels=(320, 640)),
}
CONSTRUCTOR_FIELDS = ("embedding_channels", "input_channels", "scale_factor", "cross_attention_dim",
                      "block_out_channels")


def control_net_widths(shapes: Mapping[str, Sequence[int]]) -> dict:
    """:class:`KnittedControlNetConfig` fields implied by the tensor shapes ``{key: shape}`` of a v1-v3 control net
    state dict (absent keys: field left out; ``scale_factor`` is not a weight):

    * ``input_channels``, ``block_out_channels[0]``: ``conv_in.weight`` (C_0, in, 3, 3);
    * ``block_out_channels[i+1]``: ``blocks_down.<i>.conv.conv1.weight`` (C_i+1, C_i, 3, 3);
    * ``cross_attention_dim``: ``blocks_down.0.attn1.to_k.weight`` (C_1, context width);
    * ``position_table_lengths``: ``blocks_down.0.pos_embed.pe`` / ``pos_embed_hidden.pe`` (1, length, width);
    * ``down_projection_channels``: ``conv_up<j>_down<k>.weight`` (C, C_j, 1, 1), k = 0, 1, ...
    """
    out: dict = {}
    conv_in = _shape(shapes, "conv_in.weight")
    if conv_in is not None:
        widths = [conv_in[0]]
        out["input_channels"] = conv_in[1]
        while (conv := _shape(shapes, f"blocks_down.{len(widths) - 1}.conv.conv1.weight")) is not None:
            widths.append(conv[0])
        out["block_out_channels"] = tuple(widths)
    to_k = _shape(shapes, "blocks_down.0.attn1.to_k.weight")
    if to_k is not None:
        out["cross_attention_dim"] = to_k[1]
    tables = _shape(shapes, "blocks_down.0.pos_embed.pe"), _shape(shapes, "blocks_down.0.pos_embed_hidden.pe")
    if None not in tables:
        out["position_table_lengths"] = (tables[0][1], tables[1][1])
    projections = {}
    for key, shape in shapes.items():
        name = key[:-len(".weight")] if key.endswith(".weight") else ""
        if name.startswith("conv_up") and "_down" in name and name.rsplit("_down", 1)[1].isdigit():
            projections[int(name.rsplit("_down", 1)[1])] = int(shape[0])
    if projections:
        out["down_projection_channels"] = tuple(projections[k] for k in sorted(projections))
    return out


class KnittedControlNet(nn.Module):
    """Pose image + expression -> control residuals at the UNet insertion points (HelloMeme v1-v3 control nets).

    The pose image (B, C, F, H, W) is resized bilinearly to 1/``scale_factor``, ``conv_in`` (3x3, no bias) widens it
    to ``block_out_channels[0]``, and ``blocks_down[i]`` (:class:`KnittedDownCrossAttention`, stride 2) attend to
    the expression tokens of their frame; every block's output is one control residual (B, C_i+1, F, h_i, w_i).

    Expression tokens (B, F, T, cross_attention_dim), one token per scalar (:func:`coefficient_tokens` of width
    cross_attention_dim):

    * ARKit: ``exp_proj`` over [``face_proj`` of the 3 CLIP face-part embeddings (3 tokens) | the 51 coefficients
      x500 (51 tokens)]: T = 54.
    * PD-FGC: ``emo_proj`` over the 548 motion-code values x20: T = 548.

    Output names per released class (``n`` blocks): ``HMControlNet`` ``down_0..n-1``; ``HMControlNet2``
    ``down2_0..n-1`` (added after UNet down block i); ``HMV2ControlNet`` ``up_v2_{n-1-i}``; ``HMV2ControlNet2``
    ``up2_v2_{n-1-i}`` (added before UNet up block n-1-i); ``HMV3ControlNet`` ``up3_3, up3_2, down3_0, up3_1,
    down3_1, up3_0, down3_2, down3_3`` (``down3_0`` / ``down3_1`` from 1x1 convs of ``up3_2`` / ``up3_1``,
    ``down3_2`` and ``down3_3`` the very tensor ``up3_0``).
    """

    def __init__(self, config: KnittedControlNetConfig | None = None, **overrides):
        super().__init__()
        config = config or KnittedControlNetConfig(**overrides)
        if config.expression not in EXPRESSIONS:
            raise ValueError(f"unknown expression input {config.expression!r} (known: {EXPRESSIONS})")
        self.config = config
        widths, d = list(config.block_out_channels), config.cross_attention_dim
        self.conv_in = nn.Conv2d(config.input_channels, widths[0], kernel_size=3, padding=1, bias=False)
        n, m = len(widths) - 1, len(config.down_projection_channels)
        self._down_projections = {}  # level of the block output -> (down insertion point, module name)
        for k, c_out in enumerate(config.down_projection_channels):
            level = m - k
            name = f"conv_up{level}_down{k}"
            self.add_module(name, nn.Conv2d(widths[n - level], c_out, kernel_size=1, bias=False))
            self._down_projections[level] = (f"{config.down_prefix}{k}", name)
        if config.expression in ("arkit", "either"):
            self.exp_proj = TimestepEmbedding(d, d)
            self.face_proj = TimestepEmbedding(FACE_EMBED_DIM, d)
        if config.expression in ("pdfgc", "either"):
            self.emo_proj = TimestepEmbedding(d, d)
        self.blocks_down = nn.ModuleList([
            KnittedDownCrossAttention(widths[i - 1], widths[i], config.heads, d, config.position_table_lengths)
            for i in range(1, len(widths))
        ])

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def token_dim(self) -> int:
        """Width of one coefficient token (the cross-attention width)."""
        return self.config.cross_attention_dim

    def _uses_arkit(self, drive_coeff, face_parts) -> bool:
        kind = self.config.expression
        if kind == "either":
            return drive_coeff is not None and face_parts is not None
        if kind == "arkit" and (drive_coeff is None or face_parts is None):
            raise ValueError("this control network (ARKit) needs drive_coeff (B, F, 51) and face_parts "
                             "(B, F, 3, 1024)")
        return kind == "arkit"

    def encode_expression(self, emo_embedding: torch.Tensor | None = None, drive_coeff: torch.Tensor | None = None,
                          face_parts: torch.Tensor | None = None) -> torch.Tensor:
        """Context tokens (B, F, T, cross_attention_dim): T = 54 (ARKit + face parts) or 548 (PD-FGC).

        drive_coeff: (B, F, 51); face_parts: (B, F, 3, 1024); emo_embedding: (B, F, 548).
        """
        d = self.token_dim
        if self._uses_arkit(drive_coeff, face_parts):
            b, f, n = drive_coeff.shape
            tokens = coefficient_tokens(drive_coeff, d, ARKIT_SCALE).to(self.dtype).reshape(b * f, n, d)
            parts = self.face_proj(face_parts.to(self.dtype).reshape(b * f, -1, face_parts.shape[-1]))
            context = self.exp_proj(torch.cat([parts, tokens], dim=1))  # face-part tokens first
        else:
            if emo_embedding is None:
                raise ValueError("this control network (PD-FGC) needs emo_embedding (B, F, 548)"
                                 + (" or drive_coeff + face_parts" if self.config.expression == "either" else ""))
            b, f, n = emo_embedding.shape
            tokens = coefficient_tokens(emo_embedding, d, PDFGC_SCALE).to(self.dtype).reshape(b * f, n, d)
            context = self.emo_proj(tokens)
        return context.reshape(b, f, *context.shape[1:])

    def forward(self, condition: torch.Tensor, emo_embedding: torch.Tensor | None = None,
                drive_coeff: torch.Tensor | None = None,
                face_parts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # condition: (B, C, F, H, W) in [-1, 1] -> {insertion point: (B, C_i, F, h_i, w_i)}
        b, c, f, h, w = condition.shape
        s = self.config.scale_factor
        x = condition.to(self.dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x = self.conv_in(F.interpolate(x, size=(h // s, w // s), mode="bilinear", align_corners=False))
        context = self.encode_expression(emo_embedding, drive_coeff, face_parts).flatten(0, 1)  # (b*f, T, D)

        def clip_major(t):  # (b*f, C, h, w) -> (b, C, f, h, w)
            return t.reshape(b, f, *t.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

        out = {}
        n = len(self.blocks_down)
        for i, block in enumerate(self.blocks_down):
            x = block(x, context)
            level = n - 1 - i if self.config.outputs_from_bottom else i
            out[f"{self.config.output_prefix}{level}"] = clip_major(x)
            if level in self._down_projections:
                point, name = self._down_projections[level]
                out[point] = clip_major(getattr(self, name)(x))
        if self.config.down_projection_channels:  # the remaining down points take the bottom output itself
            bottom = out[f"{self.config.output_prefix}0"]
            for k in range(len(self.config.down_projection_channels), SD15_DOWN_LEVELS):
                out[f"{self.config.down_prefix}{k}"] = bottom
        return out


class KnittedControlUNet(nn.Module):
    """Small U-Net on the resized pose image conditioned on context tokens (``SmallUnetV5``, ``ctrl_attn``).

    Down: ``down_blocks[i]`` (:class:`ResidualDownBlock`, stride 2) whose output is REPLACED by
    ``attn_blocks[i]`` (:class:`KnittedCrossAttention`). Up: ``up_blocks[i]`` = [3x3 conv + bias, InstanceNorm,
    SiLU, bilinear x2] plus the skip of the same size; the last up block has no skip.
    Outputs ``feat_0`` (bottom, mid[-1] channels, 1/2^n) ... ``feat_n`` (out_channels, full input size).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 320, cross_attention_dim: int = 2048,
                 mid_channels: tuple[int, ...] = (320, 640, 1280),
                 position_table_lengths: tuple[int, int] | None = None):
        super().__init__()
        mid_channels = list(mid_channels)
        down = [in_channels] + mid_channels
        up = mid_channels[::-1] + [out_channels]
        self.down_blocks = nn.ModuleList([ResidualDownBlock(down[i - 1], down[i]) for i in range(1, len(down))])
        self.up_blocks = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(up[i - 1], up[i], kernel_size=3, padding=1),
                nn.InstanceNorm2d(up[i]),
                nn.SiLU(),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ) for i in range(1, len(up))
        ])
        self.attn_blocks = nn.ModuleList([
            KnittedCrossAttention(c, c, cross_attention_dim=cross_attention_dim,
                                  position_table_lengths=position_table_lengths) for c in mid_channels
        ])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        # x: (b, C_in, f, H, W); context: (b, f, T, D) -> {feat_i: (b, C_i, f, H_i, W_i)}
        b, c, f, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        skips = []
        for down_block, attn_block in zip(self.down_blocks, self.attn_blocks):
            x = down_block(x)
            x = attn_block(x.reshape(b, f, *x.shape[1:]), context)
            x = x.reshape(b * f, *x.shape[2:])
            skips.append(x)

        def clip_major(t):  # (b*f, C, h, w) -> (b, C, f, h, w)
            return t.reshape(b, f, *t.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

        feats = {"feat_0": clip_major(x)}
        skips = skips[::-1][1:]
        for i, block in enumerate(self.up_blocks[:-1]):
            x = block(x) + skips[i]
            feats[f"feat_{i + 1}"] = clip_major(x)
        feats[f"feat_{len(self.up_blocks)}"] = clip_major(self.up_blocks[-1](x))
        return feats


@dataclass
class ControlEncoderConfig:
    """``config.json`` of ``HMControlNetBase`` / ``HM5ControlNetBase`` holds ``in_channels`` and
    ``cross_attention_dim``; the other fields are fixed in the released classes (kept configurable for reduced test
    models). ``position_table_lengths``: v4 (``HMControlNetBase``) stores the U-Net's position tables, (512, 1024)
    positions for (features, context); None (v5) computes them. A config.json may carry any of these
    fields; :func:`control_encoder_widths` reads the widths from a checkpoint instead (the loader uses it for the
    fields config.json leaves out, so the released files get exactly the class defaults)."""

    in_channels: int = 3
    cross_attention_dim: int = 2048
    out_channels: int = 320
    mid_channels: tuple[int, ...] = (320, 640, 1280)
    token_dim: int = 1024  # width of one coefficient token
    num_tokens: int = 16  # context tokens after the pre-projection across the coefficient axis
    downscale: int = 8  # the pose image is resized to 1/downscale (the latent size)
    position_table_lengths: tuple[int, int] | None = None


def _shape(shapes, key: str):
    shape = shapes.get(key)
    return None if shape is None else tuple(int(n) for n in shape)


def control_encoder_widths(shapes: Mapping[str, Sequence[int]]) -> dict:
    """:class:`ControlEncoderConfig` fields implied by the tensor shapes of an ``HM5ControlNetBase`` state dict
    ``{key: shape}`` (fields whose keys are absent are left out; ``downscale`` is not a weight):

    * ``in_channels`` / ``mid_channels``: ``ctrl_attn.down_blocks.<i>.conv1.weight`` (mid_i, in or mid_{i-1}, 3, 3);
    * ``out_channels``: the last ``ctrl_attn.up_blocks.<n>.0.weight`` (out, mid_0, 3, 3);
    * ``cross_attention_dim``: ``ctrl_attn.attn_blocks.0.attn1.to_k.weight`` (mid_0, context width);
    * ``token_dim``: ``emo_proj.linear_1.weight`` (context width, token_dim);
    * ``num_tokens``: ``emo_pre_proj.linear_1.weight`` (num_tokens, 548);
    * ``position_table_lengths`` (v4 files only): ``ctrl_attn.attn_blocks.0.pos_embed.pe`` /
      ``pos_embed_hidden.pe`` (1, length, width).

    The released file gives the class defaults (320, 640, 1280 / 320 / 2048 / 1024 / 16).
    """
    out: dict = {}
    mids = []
    while (conv := _shape(shapes, f"ctrl_attn.down_blocks.{len(mids)}.conv1.weight")) is not None:
        if not mids:
            out["in_channels"] = conv[1]
        mids.append(conv[0])
    if mids:
        out["mid_channels"] = tuple(mids)
        last = _shape(shapes, f"ctrl_attn.up_blocks.{len(mids) - 1}.0.weight")
        if last is not None:
            out["out_channels"] = last[0]
    for field_name, key, axis in (("cross_attention_dim", "ctrl_attn.attn_blocks.0.attn1.to_k.weight", 1),
                                  ("token_dim", "emo_proj.linear_1.weight", 1),
                                  ("num_tokens", "emo_pre_proj.linear_1.weight", 0)):
        shape = _shape(shapes, key)
        if shape is not None:
            out[field_name] = shape[axis]
    tables = (_shape(shapes, "ctrl_attn.attn_blocks.0.pos_embed.pe"),
              _shape(shapes, "ctrl_attn.attn_blocks.0.pos_embed_hidden.pe"))
    if None not in tables:
        out["position_table_lengths"] = (tables[0][1], tables[1][1])
    return out


class ControlEncoder(nn.Module):
    """Pose image + expression -> multi-scale control features (``HM5ControlNetBase``; ``HMControlNetBase`` with
    ``position_table_lengths``: the same arithmetic with the U-Net's stored position tables).

    Expression context (B, F, num_tokens, cross_attention_dim), one of:

    * ARKit (used whenever ``drive_coeff`` is given): every coefficient x500 becomes a ``token_dim`` token, the 51
      tokens are mixed into 16 by ``exp_pre_proj`` (acting across the coefficient axis) and widened by
      ``exp_proj``; the 3 CLIP face-part embeddings go through ``face_pre_proj`` (3 -> 16 across parts) and
      ``face_proj``; the two are summed.
    * PD-FGC (``emo_embedding``): every one of the 548 values x20 becomes a token, ``emo_pre_proj`` (548 -> 16),
      ``emo_proj``.
    """

    def __init__(self, config: ControlEncoderConfig | None = None, **overrides):
        super().__init__()
        config = config or ControlEncoderConfig(**overrides)
        self.config = config
        d, n, ctx = config.token_dim, config.num_tokens, config.cross_attention_dim
        self.emo_pre_proj = TimestepEmbedding(PDFGC_COEFFICIENTS, n)
        self.emo_proj = TimestepEmbedding(d, ctx)
        self.exp_pre_proj = TimestepEmbedding(ARKIT_COEFFICIENTS, n)
        self.face_pre_proj = TimestepEmbedding(FACE_PARTS, n)
        self.exp_proj = TimestepEmbedding(d, ctx)
        self.face_proj = TimestepEmbedding(d, ctx)
        self.ctrl_attn = KnittedControlUNet(config.in_channels, config.out_channels, ctx, config.mid_channels,
                                            position_table_lengths=config.position_table_lengths)

    @property
    def dtype(self) -> torch.dtype:
        return self.exp_proj.linear_1.weight.dtype

    @property
    def token_dim(self) -> int:
        """Width of one coefficient token before the pre-projection."""
        return self.config.token_dim

    def _tokens_to_context(self, values: torch.Tensor, scale: float, pre_proj: nn.Module, proj: nn.Module):
        # values: (b, f, N) -> tokens (b*f, token_dim, N) -> pre_proj across N -> (b*f, num_tokens, token_dim)
        b, f, n = values.shape
        tokens = coefficient_tokens(values, self.config.token_dim, scale).to(self.dtype)  # (b*f*N, token_dim)
        tokens = tokens.reshape(b * f, n, -1).transpose(1, 2)
        return proj(pre_proj(tokens).transpose(1, 2))  # (b*f, num_tokens, cross_attention_dim)

    def encode_expression(self, emo_embedding: torch.Tensor | None = None, drive_coeff: torch.Tensor | None = None,
                          face_parts: torch.Tensor | None = None) -> torch.Tensor:
        """Context tokens (B, F, num_tokens, cross_attention_dim) from ARKit + face parts or from PD-FGC.

        drive_coeff: (B, F, 51); face_parts: (B, F, 3, token_dim); emo_embedding: (B, F, 548).
        """
        if drive_coeff is not None:
            if face_parts is None:
                raise ValueError("the ARKit expression branch needs face_parts (B, F, 3, 1024) with drive_coeff")
            b, f = drive_coeff.shape[:2]
            context = self._tokens_to_context(drive_coeff, ARKIT_SCALE, self.exp_pre_proj, self.exp_proj)
            parts = face_parts.to(self.dtype).reshape(b * f, *face_parts.shape[2:]).transpose(1, 2)  # (bf, D, 3)
            context = context + self.face_proj(self.face_pre_proj(parts).transpose(1, 2))
        elif emo_embedding is not None:
            b, f = emo_embedding.shape[:2]
            context = self._tokens_to_context(emo_embedding, PDFGC_SCALE, self.emo_pre_proj, self.emo_proj)
        else:
            raise ValueError("give either drive_coeff + face_parts (ARKit) or emo_embedding (PD-FGC)")
        return context.reshape(b, f, *context.shape[1:])

    def resize_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) pose image -> (B, C, F, H/8, W/8), bilinear without corner alignment."""
        b, c, f, h, w = condition.shape
        x = condition.to(self.dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        size = (h // self.config.downscale, w // self.config.downscale)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.reshape(b, f, c, *size).permute(0, 2, 1, 3, 4)

    def forward(self, condition: torch.Tensor, emo_embedding: torch.Tensor | None = None,
                drive_coeff: torch.Tensor | None = None,
                face_parts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # condition: (B, 3, F, H, W) in [-1, 1]
        # -> {feat_0: (B, 1280, F, H/64, W/64), ..., feat_3: (B, 320, F, H/8, W/8)}
        context = self.encode_expression(emo_embedding=emo_embedding, drive_coeff=drive_coeff, face_parts=face_parts)
        return self.ctrl_attn(self.resize_condition(condition), context)


class FeatureProjector(nn.Module):
    """One control map (``HMProjector``): ``proj`` (3x3, in -> out, no bias), then ``attn``, a knitted
    self-attention (out -> out/4 -> out, 8 heads) with residual. (B, in, F, h, w) -> (B, out, F, h, w)."""

    def __init__(self, in_channels: int, out_channels: int, num_attention_heads: int = 8):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.attn = KnittedAttention(out_channels, out_channels // 4, num_attention_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        x = self.proj(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # (b*f, out, h, w)
        x = x.permute(0, 2, 3, 1).reshape(b, f, h, w, -1)  # (b, f, h, w, out)
        x = self.attn(x, residual=True)
        return x.permute(0, 4, 1, 2, 3).contiguous()


class FrameConv(nn.Conv2d):
    """One v4 control map (``HM4SD15ControlProj``): a 3x3 conv without bias applied to every frame.
    (B, in, F, h, w) -> (B, out, F, h, w)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = super().forward(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # (b*f, out, h, w)
        return y.reshape(b, f, *y.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


# insertion point -> (control feature, module name, in channels, out channels); released SD1.5 sizes
CONTROL_PROJECTIONS: dict[str, tuple[str, str, int, int]] = {
    "up3_0": ("feat_0", "map1280_to_1280", 1280, 1280),
    "up3_1": ("feat_1", "map640_to_1280", 640, 1280),
    "up3_2": ("feat_2", "map320_to_1280", 320, 1280),
    "up3_3": ("feat_3", "map320_to_640", 320, 640),
    "down3_0": ("feat_2", "map320_to_320", 320, 320),
    "down3_1": ("feat_1", "map640_to_640", 640, 640),
    "down3_2": ("feat_0", "map1280_to_1280_2", 1280, 1280),
    "down3_3": ("feat_0", "map1280_to_1280_3", 1280, 1280),
}


def control_projections(shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[str, str, int, int]]:
    """:data:`CONTROL_PROJECTIONS` with each map's in / out channels read from ``{key: shape}`` of an
    ``HM5SD15ControlProj`` state dict (``<name>.proj.weight`` is (out, in, 3, 3)) or an ``HM4SD15ControlProj`` one
    (``<name>.weight``); names and the feature -> insertion point mapping never change (a reduced model keeps the
    released names ``map1280_to_1280`` etc.). Maps whose weight is absent keep the released widths."""
    out = {}
    for point, (feat, name, c_in, c_out) in CONTROL_PROJECTIONS.items():
        shape = _shape(shapes or {}, f"{name}.proj.weight") or _shape(shapes or {}, f"{name}.weight")
        out[point] = (feat, name, shape[1], shape[0]) if shape is not None and len(shape) == 4 else \
            (feat, name, c_in, c_out)
    return out


class ControlProjector(nn.Module):
    """Control features -> SD1.5 insertion points: one map per point, named ``map{in}_to_{out}[_2|_3]`` (see
    :data:`CONTROL_PROJECTIONS`; :func:`control_projections` gives the widths of a reduced checkpoint).

    ``attention`` True (``HM5SD15ControlProj``): each map is a :class:`FeatureProjector` (conv + knitted
    self-attention); False (``HM4SD15ControlProj``): a plain :class:`FrameConv`."""

    def __init__(self, projections: dict[str, tuple[str, str, int, int]] | None = None, attention: bool = True):
        super().__init__()
        self.projections = dict(projections or CONTROL_PROJECTIONS)
        for _, name, c_in, c_out in self.projections.values():
            self.add_module(name, FeatureProjector(c_in, c_out) if attention else FrameConv(c_in, c_out))

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # feats: {feat_i: (B, C_i, F, h_i, w_i)} -> {down3_0..3, up3_0..3: (B, C, F, h, w)}
        return {point: getattr(self, name)(feats[feat]) for point, (feat, name, _, _) in self.projections.items()}
