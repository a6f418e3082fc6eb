"""Spatial-knitting attention (HelloMeme's "SK" blocks).

A knitted attention mixes a feature map with a reference map in two 1-D attentions instead of one 2-D one:

1. rows: ``[features | reference]`` side by side along the width, attention over each row's 2W tokens, keep the
   first W tokens (the feature half);
2. columns: ``[row result | reference]`` stacked along the height, attention over each column's 2H tokens, keep the
   first H. The column stage pairs the row result with the RAW reference (not a processed one).

One LayerNorm is shared by both stages and the position table is added before it. Without a reference the stages
are plain row / column self-attention. :func:`knit` is that computation; the modules below wrap it:

* :class:`KnittedReferenceAttention`: features (B*F, C, H, W) attend to a reference (B or B*F, C, H, W), output
  ``features + proj(knit(...))``. v5 (``SKReferenceAttentionV5``): computed ``[sin | cos]`` positions and an unused
  ``time_emb_proj`` kept for its checkpoint keys. With ``position_table_length`` it is the v1/v3 block
  (``SKReferenceAttention(V3)``: stored table ``pos_embed.pe``).
* :class:`KnittedAttention` (``STKAttentionV5``): channels-last (b, f, h, w, c) maps; a 3x3 ``conv_in`` (shared by
  features and reference) into ``mid`` channels, knitting, a 3x3 ``proj`` back, optional residual.
* :class:`KnittedReferenceModule` (``STKReferenceModule``, v5b/v5c): a residual-free knitted self-attention on the
  reference, then a knitted attention of the features to that result with residual.

The submodule names (``attn1``/``attn2``, ``attnx``/``attny``, ``norm``, ``proj``, ``conv_in``, ``time_emb_proj``,
``attn_ref``/``attn``) are the released state-dict keys.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import Attention
from ..layers.embeddings import SinCosHalves, SinusoidalTable, TimestepEmbedding


def self_attention(dim: int, heads: int) -> Attention:
    """The released SK attention: ``heads`` heads of ``dim // heads`` channels, output bias only (the shared
    :class:`...layers.attention.Attention`)."""
    return Attention(dim, heads=heads, dim_head=dim // heads)


PositionFn = Callable[..., torch.Tensor]


def knit(x: torch.Tensor, ref: torch.Tensor | None, row_attn: nn.Module, col_attn: nn.Module, norm: nn.Module,
         positions: PositionFn, column_table_length: int | None = None) -> torch.Tensor:
    """Row then column attention of ``x`` knitted with ``ref``; channels-last maps.

    x: (N, H, W, C); ref: (N, H, W, C) or None -> (N, H, W, C).
    ``positions(tokens, length=None)`` adds the position table to (N', L, C) tokens; ``column_table_length`` forces
    the column stage's table length (the v5 reference quirk), None uses the column token count.
    """
    n, h, w, c = x.shape
    # rows: (N*H, W', C) with W' = 2W when knitted with the reference; only the feature half's outputs are kept, so
    # only its W tokens are queries (the keys and values are all W' tokens): the same result for half the queries
    rows = torch.cat([x, ref], dim=2) if ref is not None else x
    rows = norm(positions(rows.reshape(n * h, rows.shape[2], c)))
    y = _kept_half(row_attn, rows, w).reshape(n, h, w, c)

    # columns: (N*W, H', C) with H' = 2H when knitted with the (raw) reference
    cols = torch.cat([y, ref], dim=1) if ref is not None else y
    cols = norm(positions(cols.permute(0, 2, 1, 3).reshape(n * w, cols.shape[1], c), length=column_table_length))
    return _kept_half(col_attn, cols, h).reshape(n, w, h, c).permute(0, 2, 1, 3)


def _kept_half(attn: nn.Module, tokens: torch.Tensor, keep: int) -> torch.Tensor:
    """Attention outputs of the first ``keep`` of ``tokens`` (N', L, C) over all of them -> (N', keep, C)."""
    if tokens.shape[1] == keep:
        return attn(tokens)
    return attn(tokens[:, :keep], context=tokens)


def repeat_over_frames(ref: torch.Tensor, batch_frames: int, num_frames: int) -> torch.Tensor:
    """A per-clip reference (B, ...) repeated to (B*F, ...) in '(b f)' order; per-frame references pass through."""
    if ref.shape[0] == batch_frames:
        return ref
    if ref.shape[0] * num_frames != batch_frames:
        raise ValueError(f"reference batch {ref.shape[0]} does not match features batch {batch_frames} "
                         f"with {num_frames} frame(s) per clip")
    return ref.repeat_interleave(num_frames, dim=0)


class KnittedReferenceAttention(nn.Module):
    """Features attend to a reference map by spatial knitting; ``out = hidden + proj(knit(hidden, ref))``.

    Args:
        in_channels: C of features and reference.
        num_attention_heads: heads of both attentions (dim_head = C // heads).
        position_table_length: None (v5): computed ``[sin | cos]`` positions. An int (v1/v3, 128 there): a stored
            interleaved table ``pos_embed.pe`` of that length (so 2W and 2H must not exceed it).
        unused_time_embed_dim: v5 carries ``time_emb_proj = Linear(1280, C)`` in its checkpoint without using it;
            give its input width to keep the keys (None: no such layer).
        column_pe_from_row_length: computed positions only. True (as the released v5 code): the column stage adds
            the table built for the ROW length 2W, so only square maps (H == W) work. False: use the column length
            2H; identical on square maps, and non-square maps work too.
    """

    def __init__(self, in_channels: int, num_attention_heads: int = 8, position_table_length: int | None = None,
                 unused_time_embed_dim: int | None = 1280, column_pe_from_row_length: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        if unused_time_embed_dim:
            self.time_emb_proj = nn.Linear(unused_time_embed_dim, in_channels)  # in the checkpoint, never used
        if position_table_length:
            self.pos_embed = SinusoidalTable(in_channels, position_table_length)
        self.attn1 = self_attention(in_channels, num_attention_heads)  # rows
        self.attn2 = self_attention(in_channels, num_attention_heads)  # columns
        self.norm = nn.LayerNorm(in_channels, eps=norm_eps)
        self.proj = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.column_pe_from_row_length = column_pe_from_row_length
        self._computed_positions = SinCosHalves() if not position_table_length else None

    def forward(self, hidden_states: torch.Tensor, ref_stats: torch.Tensor, num_frames: int) -> torch.Tensor:
        # hidden_states: (B*F, C, H, W); ref_stats: (B, C, H, W) or (B*F, C, H, W) -> (B*F, C, H, W)
        h, w = hidden_states.shape[-2:]
        ref = repeat_over_frames(ref_stats, hidden_states.shape[0], num_frames)
        column_length = None
        if self._computed_positions is not None:
            positions = self._computed_positions
            if self.column_pe_from_row_length:
                if h != w:
                    raise ValueError(
                        f"the released v5 reference attention only works on square maps (got {h}x{w}): its column "
                        "stage uses the row-length position table. Build it with column_pe_from_row_length=False "
                        "(the adapter's use_row_length_column_positions(False)) for non-square latents.")
                column_length = 2 * w
        else:
            positions = self.pos_embed
        x = hidden_states.permute(0, 2, 3, 1)  # (B*F, H, W, C)
        out = knit(x, ref.permute(0, 2, 3, 1), self.attn1, self.attn2, self.norm, positions, column_length)
        return hidden_states + self.proj(out.permute(0, 3, 1, 2).contiguous())


class KnittedAttention(nn.Module):
    """Knitted attention on channels-last maps with a shared input conv (``STKAttentionV5``).

    ``conv_in`` (3x3, in -> mid) is applied to the features and to the reference with the same weights, the two are
    knitted (computed ``[sin | cos]`` positions of each stage's length), ``proj`` (3x3, mid -> in) maps back, and the
    result is added to the input when ``residual``. Without a reference it is row/column self-attention.

    Args:
        in_channels, mid_channels: channels outside / inside the attention.
        num_attention_heads: heads (dim_head = mid // heads).
        time_embed_dim: if given, ``emb_proj`` (MLP time_embed_dim -> mid) adds an embedding to the reference
            features when ``emb`` is passed (no released checkpoint has it).
    """

    def __init__(self, in_channels: int, mid_channels: int, num_attention_heads: int = 8,
                 time_embed_dim: int | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        if time_embed_dim is not None:
            self.emb_proj = TimestepEmbedding(time_embed_dim, mid_channels)
        self.attnx = self_attention(mid_channels, num_attention_heads)  # rows (along w)
        self.attny = self_attention(mid_channels, num_attention_heads)  # columns (along h)
        self.norm = nn.LayerNorm(mid_channels, eps=norm_eps)
        self.proj = nn.Conv2d(mid_channels, in_channels, kernel_size=3, padding=1)
        self._positions = SinCosHalves()

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        # (N, h, w, c) channels-last -> conv -> (N, h, w, c')
        return conv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)

    def forward(self, hidden_states: torch.Tensor, ref_stats: torch.Tensor | None = None,
                emb: torch.Tensor | None = None, residual: bool = True) -> torch.Tensor:
        # hidden_states: (b, f, h, w, c_in); ref_stats: (b, f, h, w, c_in) or None -> (b, f, h, w, c_in)
        b, f, h, w, c = hidden_states.shape
        x = self._conv(self.conv_in, hidden_states.reshape(b * f, h, w, c))
        ref = None
        if ref_stats is not None:
            ref = self._conv(self.conv_in, ref_stats.reshape(b * f, h, w, c))
            if emb is not None and hasattr(self, "emb_proj"):
                # emb: (b, time_embed_dim) -> added to every frame of the clip's reference
                ref = ref + self.emb_proj(emb).repeat_interleave(f, dim=0)[:, None, None, :]
        out = knit(x, ref, self.attnx, self.attny, self.norm, self._positions)
        out = self._conv(self.proj, out).reshape(b, f, h, w, c)
        return hidden_states + out if residual else out


class KnittedReferenceModule(nn.Module):
    """v5b/v5c reference block (``STKReferenceModule``): ``ref' = attn_ref(ref)`` (knitted self-attention, no
    residual), then ``out = hidden + attn(hidden, ref')``; both halves are :class:`KnittedAttention` (C -> C)."""

    def __init__(self, in_channels: int, num_attention_heads: int = 8, norm_eps: float = 1e-5):
        super().__init__()
        self.attn_ref = KnittedAttention(in_channels, in_channels, num_attention_heads, norm_eps=norm_eps)
        self.attn = KnittedAttention(in_channels, in_channels, num_attention_heads, norm_eps=norm_eps)

    def forward(self, hidden_states: torch.Tensor, ref_stats: torch.Tensor, num_frames: int) -> torch.Tensor:
        # hidden_states: (B*F, C, H, W); ref_stats: (B, C, H, W) or (B*F, C, H, W) -> (B*F, C, H, W)
        bf, c, h, w = hidden_states.shape
        ref = ref_stats.permute(0, 2, 3, 1)[:, None]  # (B or B*F, 1, H, W, C)
        # the self pass is per image: run it once per clip reference, then repeat over the frames
        ref = self.attn_ref(ref, residual=False)[:, 0].permute(0, 3, 1, 2)
        ref = repeat_over_frames(ref, bf, num_frames)
        b = bf // num_frames
        x = hidden_states.permute(0, 2, 3, 1).reshape(b, num_frames, h, w, c)
        ref = ref.permute(0, 2, 3, 1).reshape(b, num_frames, h, w, c)
        out = self.attn(x, ref, residual=True)
        return out.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
