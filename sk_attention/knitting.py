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

The reference side of a knitting (the reference tokens' keys and values, and for v5b/v5c the reference self pass
before them) depends on the reference only: :class:`ReferenceFeatures` wraps a reference-cache entry so that each
block computes it once per run (:func:`prepared_reference_cache`), not at every step and frame.

The submodule names (``attn1``/``attn2``, ``attnx``/``attny``, ``norm``, ``proj``, ``conv_in``, ``time_emb_proj``,
``attn_ref``/``attn``) are the released state-dict keys.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import Attention, multihead_attention
from ..layers.embeddings import SinCosHalves, SinusoidalTable, TimestepEmbedding


def self_attention(dim: int, heads: int) -> Attention:
    """The released SK attention: ``heads`` heads of ``dim // heads`` channels, output bias only (the shared
    :class:`...layers.attention.Attention`)."""
    return Attention(dim, heads=heads, dim_head=dim // heads)


PositionFn = Callable[..., torch.Tensor]  # positions(tokens (N, L, C), length=None) -> tokens + table; has .table()


@dataclass
class KnitReference:
    """The reference side of a knitting, which depends on the reference only: the keys and values of the reference
    tokens in the row stage (LayerNorm(ref + row positions W..2W-1)) and in the column stage (LayerNorm(ref +
    column positions H..2H-1), the RAW reference), and the position rows of the feature half. Built once per
    reference (:func:`knit_reference`), it serves every step and every frame.

    rows: keys, values (R, H, W, inner); cols: keys, values (R, W, H, inner), R the reference batch (B per clip or
    B*F per frame); row_positions (W, C), col_positions (H, C).
    """

    rows: tuple[torch.Tensor, torch.Tensor]
    cols: tuple[torch.Tensor, torch.Tensor]
    row_positions: torch.Tensor
    col_positions: torch.Tensor

    @property
    def batch(self) -> int:
        return self.rows[0].shape[0]


def knit_reference(ref: torch.Tensor, row_attn: Attention, col_attn: Attention, norm: nn.Module,
                   positions: PositionFn, column_table_length: int | None = None) -> KnitReference:
    """The reference side of :func:`knit` for ``ref`` (R, H, W, C) channels-last."""
    _, h, w, _ = ref.shape
    row_table = positions.table(2 * w, ref)  # (2W, C): [features | reference] along a row
    col_length = 2 * h if column_table_length is None else column_table_length
    if col_length != 2 * h:
        raise ValueError(f"positional table of length {col_length} cannot be added to {2 * h} tokens")
    col_table = positions.table(col_length, ref)  # (2H, C)
    rows = norm(ref + row_table[w:])  # (R, H, W, C)
    cols = norm(ref.transpose(1, 2) + col_table[h:])  # (R, W, H, C)
    return KnitReference(rows=(row_attn.to_k(rows), row_attn.to_v(rows)),
                         cols=(col_attn.to_k(cols), col_attn.to_v(cols)),
                         row_positions=row_table[:w], col_positions=col_table[:h])


def knit(x: torch.Tensor, ref: "torch.Tensor | KnitReference | None", row_attn: Attention, col_attn: Attention,
         norm: nn.Module, positions: PositionFn, column_table_length: int | None = None) -> torch.Tensor:
    """Row then column attention of ``x`` knitted with ``ref``; channels-last maps.

    x: (N, H, W, C); ref: (R, H, W, C) with N a multiple of R (a per-clip reference serves the clip's frames, '(b f)'
    order), its :class:`KnitReference`, or None -> (N, H, W, C).
    ``positions(tokens, length=None)`` adds the position table to (N', L, C) tokens; ``column_table_length`` forces
    the column stage's table length (the v5 reference quirk), None uses the column token count.
    Only the feature half's outputs are kept, so only its tokens are queries; the reference tokens are keys and
    values (computed once per reference by :func:`knit_reference`).
    """
    n, h, w, c = x.shape
    if ref is None:
        # rows (N*H, W, C), then columns (N*W, H, C): plain self-attention
        y = row_attn(norm(positions(x.reshape(n * h, w, c)))).reshape(n, h, w, c)
        cols = norm(positions(y.transpose(1, 2).reshape(n * w, h, c), length=column_table_length))
        return col_attn(cols).reshape(n, w, h, c).transpose(1, 2)
    if not isinstance(ref, KnitReference):
        ref = knit_reference(ref, row_attn, col_attn, norm, positions, column_table_length)
    if n % ref.batch:
        raise ValueError(f"reference batch {ref.batch} does not divide the features batch {n}")
    y = _attend_with_reference(row_attn, norm(x + ref.row_positions), ref.rows)  # (N, H, W, C)
    out = _attend_with_reference(col_attn, norm(y.transpose(1, 2) + ref.col_positions), ref.cols)  # (N, W, H, C)
    return out.transpose(1, 2)


def _attend_with_reference(attn: Attention, tokens: torch.Tensor,
                           ref_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Each line of ``tokens`` (N, A, L, C) attends to itself and to the same line of the reference (keys, values
    (R, A, L, inner), repeated over the N // R frames) -> (N, A, L, C_out)."""
    n, a, length, _ = tokens.shape
    q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)  # (N, A, L, inner)
    k, v = _with_reference(k, ref_kv[0]), _with_reference(v, ref_kv[1])  # (N*A, 2L, inner)
    out = multihead_attention(q.reshape(n * a, length, -1), k, v, attn.heads)
    return attn.to_out[0](out).reshape(n, a, length, -1)


def _with_reference(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # t: (N, A, L, inner), ref: (R, A, L, inner) -> [t | ref] per line: (N*A, 2L, inner)
    n, a, length, d = t.shape
    r = ref.shape[0]
    both = torch.cat([t.reshape(r, n // r, a, length, d), ref[:, None].expand(r, n // r, a, length, d)], dim=3)
    return both.view(n * a, 2 * length, d)


class ReferenceFeatures:
    """A reference-cache entry (R, C, H, W) handed to the knitting blocks instead of the bare tensor: each block that
    reads it computes its reference side (:class:`KnitReference`, for v5b/v5c also the reference self pass) on first
    use and keeps it, so the denoising steps and frames of a run share it. Pipelines wrap their cache once per run
    (:func:`prepared_reference_cache`); the blocks accept the bare tensor too (computed per call)."""

    def __init__(self, features: torch.Tensor):
        self.features = features
        self._sides: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
        self._moved: dict = {}

    @property
    def shape(self) -> torch.Size:
        return self.features.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device=None, dtype=None) -> "ReferenceFeatures":
        """Itself when already there, else a moved copy (kept, so its prepared sides are reused too)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device == self.device and dtype == self.dtype:
            return self
        key = (str(device), dtype)
        if key not in self._moved:
            self._moved[key] = ReferenceFeatures(self.features.to(device=device, dtype=dtype))
        return self._moved[key]

    def side(self, module: nn.Module, key: tuple, build: Callable[[torch.Tensor], object]):
        """``build(features)`` for ``module``, computed once per ``key`` (the module's settings it depends on)."""
        entry = self._sides.get(module)
        if entry is None or entry[0] != key:
            entry = (key, build(self.features))
            self._sides[module] = entry
        return entry[1]


ReferenceInput = Union[torch.Tensor, ReferenceFeatures]


def prepared_reference_cache(cache: dict, *adapters: nn.Module | None) -> dict:
    """``cache`` ({key: (R, C, h, w)}) with its entries wrapped as :class:`ReferenceFeatures` when every reference
    block (``reference_modules_down`` / ``_mid`` / ``_up``) of the ``adapters`` that will read it is a knitting block
    of this module (they accept both forms); otherwise the cache unchanged."""
    blocks = []
    for adapter in adapters:
        for name in ("reference_modules_down", "reference_modules_mid", "reference_modules_up"):
            part = getattr(adapter, name, None)
            blocks += [] if part is None else list(part) if isinstance(part, nn.ModuleList) else [part]
    if not blocks or not all(isinstance(b, (KnittedReferenceAttention, KnittedReferenceModule)) for b in blocks):
        return dict(cache)
    return {k: v if isinstance(v, ReferenceFeatures) else ReferenceFeatures(v) for k, v in cache.items()}


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

    def _positions(self, h: int, w: int) -> tuple[PositionFn, int | None]:
        """The position adder and the column stage's table length for (h, w) maps."""
        if self._computed_positions is None:
            return self.pos_embed, None
        if not self.column_pe_from_row_length:
            return self._computed_positions, None
        if h != w:
            raise ValueError(
                f"the released v5 reference attention only works on square maps (got {h}x{w}): its column "
                "stage uses the row-length position table. Build it with column_pe_from_row_length=False "
                "(the adapter's use_row_length_column_positions(False)) for non-square latents.")
        return self._computed_positions, 2 * w

    def reference_side(self, ref_stats: ReferenceInput) -> KnitReference:
        """The knitting's reference side for ``ref_stats`` (R, C, H, W); computed once per
        :class:`ReferenceFeatures`."""
        def build(ref: torch.Tensor) -> KnitReference:
            positions, column_length = self._positions(*ref.shape[-2:])
            return knit_reference(ref.permute(0, 2, 3, 1), self.attn1, self.attn2, self.norm, positions, column_length)

        if isinstance(ref_stats, ReferenceFeatures):
            return ref_stats.side(self, (self.column_pe_from_row_length,), build)
        return build(ref_stats)

    def forward(self, hidden_states: torch.Tensor, ref_stats: ReferenceInput, num_frames: int) -> torch.Tensor:
        # hidden_states: (B*F, C, H, W); ref_stats: (B, C, H, W) or (B*F, C, H, W), bare or as ReferenceFeatures
        # -> (B*F, C, H, W)
        h, w = hidden_states.shape[-2:]
        _check_reference(ref_stats, hidden_states, num_frames)
        positions, column_length = self._positions(h, w)
        x = hidden_states.permute(0, 2, 3, 1)  # (B*F, H, W, C)
        out = knit(x, self.reference_side(ref_stats), self.attn1, self.attn2, self.norm, positions, column_length)
        return hidden_states + self.proj(out.permute(0, 3, 1, 2).contiguous())


def _check_reference(ref: ReferenceInput, hidden_states: torch.Tensor, num_frames: int) -> None:
    # a per-clip (B) or per-frame (B*F) reference of the features' size
    bf = hidden_states.shape[0]
    if ref.shape[0] != bf and ref.shape[0] * num_frames != bf:
        raise ValueError(f"reference batch {ref.shape[0]} does not match features batch {bf} "
                         f"with {num_frames} frame(s) per clip")
    if tuple(ref.shape[-2:]) != tuple(hidden_states.shape[-2:]):
        raise ValueError(f"reference map {tuple(ref.shape[-2:])} does not match the features' "
                         f"{tuple(hidden_states.shape[-2:])}")


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

    def reference_side(self, ref: torch.Tensor) -> KnitReference:
        """conv_in, then the knitting's reference side: ref (R, h, w, c_in) channels-last."""
        return knit_reference(self._conv(self.conv_in, ref), self.attnx, self.attny, self.norm, self._positions)

    def forward(self, hidden_states: torch.Tensor, ref_stats: "torch.Tensor | KnitReference | None" = None,
                emb: torch.Tensor | None = None, residual: bool = True) -> torch.Tensor:
        # hidden_states: (b, f, h, w, c_in); ref_stats: (b, f, h, w, c_in), or the reference side of a per-clip or
        # per-frame reference (:meth:`reference_side`), or None -> (b, f, h, w, c_in)
        b, f, h, w, c = hidden_states.shape
        x = self._conv(self.conv_in, hidden_states.reshape(b * f, h, w, c))
        ref = ref_stats
        if isinstance(ref_stats, torch.Tensor):
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

    def reference_side(self, ref_stats: ReferenceInput) -> KnitReference:
        """The self pass on the reference (once per clip or frame reference, no residual), then ``attn``'s reference
        side; computed once per :class:`ReferenceFeatures` (the whole reference path is constant across steps)."""
        def build(ref: torch.Tensor) -> KnitReference:
            ref = self.attn_ref(ref.permute(0, 2, 3, 1)[:, None], residual=False)[:, 0]  # (R, H, W, C)
            return self.attn.reference_side(ref)

        if isinstance(ref_stats, ReferenceFeatures):
            return ref_stats.side(self, (), build)
        return build(ref_stats)

    def forward(self, hidden_states: torch.Tensor, ref_stats: ReferenceInput, num_frames: int) -> torch.Tensor:
        # hidden_states: (B*F, C, H, W); ref_stats: (B, C, H, W) or (B*F, C, H, W), bare or as ReferenceFeatures
        # -> (B*F, C, H, W)
        bf, c, h, w = hidden_states.shape
        _check_reference(ref_stats, hidden_states, num_frames)
        x = hidden_states.permute(0, 2, 3, 1).reshape(bf, 1, h, w, c)  # (B*F, 1, H, W, C)
        out = self.attn(x, self.reference_side(ref_stats), residual=True)
        return out.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
