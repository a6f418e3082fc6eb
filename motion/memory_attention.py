"""MEMO memory-guided temporal module: linear attention over the frames of a clip plus a decaying memory of past
frames, one memory state per attention layer, carried from clip to clip.

Layout (released key names, relative to ``...motion_modules.<k>.``)::

    temporal_transformer.norm                    GroupNorm(32, C, eps 1e-6), per frame
    temporal_transformer.proj_in                 Linear(C, inner)
    temporal_transformer.transformer_blocks.0
        .attention_blocks.{0,1}                  MemoryLinearAttention: to_q/to_k/to_v (no bias), to_out.0 (+bias),
                                                 optional pos_encoder.pe (1, max_len, inner)
        .norms.{0,1}                             LayerNorm(inner)
        .ff, .ff_norm                            GEGLU feed-forward, LayerNorm
    temporal_transformer.proj_out                Linear(inner, C)

Math of one layer (heads h, head width d; rows are (sequence, head) pairs):

* ``q = softmax_d(x Wq) * d^-0.5``, ``k = softmax_F(x Wk)``, ``v = x Wv`` for the current clip (``x`` plus the
  positional table when enabled); past frames ``m``: ``km = softmax_N(m Wk)``, ``vm = m Wv``.
* Update (``is_new_audio`` clears the state first; an update happens when ``is_new_audio`` or
  ``update_past_memory``): with ``w_j = 0.9^(N-1-j)``, ``KVnew = sum_j (w_j km_j)^T (w_j vm_j)``,
  ``Znew = sum_j w_j km_j``; empty state -> ``(KVnew, Znew)``, else ``KV = 0.9^N KV + KVnew``, ``Z = 0.9^N Z + Znew``.
* Read: ``KVt = 0.9 KV + sum_f k_f^T v_f``, ``Zt = 0.9 Z + sum_f k_f``, ``out_f = q_f KVt / max(q_f . Zt, 1e-10)``
  for every frame (not causal), heads merged, ``to_out.0`` (:func:`memory_read`).

The memory is explicit (:class:`MemoryState`), resettable (:meth:`MemoryTemporalModule.reset_memory`) and movable
between devices (:meth:`MemoryState.to`), e.g. to the CPU between clips. It is never part of the state dict.

Precision: the state is kept in the model dtype (its ``(rows, d, d)`` tensors are the largest activations of the
network, so an fp32 copy would double their memory), but the parts that break in half precision are done in fp32:
the normaliser ``q . Zt`` with its floor (1e-10 is below the smallest fp16 value, so the floor would read 0 and a
zero normaliser would give inf/NaN), the division, the small ``Z`` sums, and the decay-and-add of the state update
(one fused op, one rounding). In fp32 this is the original's computation (up to the rounding order of that fused op,
well inside the parity tolerances).

Two layouts compute the same sums: heads as rows ``(R*h, F, d)`` with batched matmuls (wide heads), and, for head
widths up to :data:`SMALL_HEAD_WIDTH`, the token layout ``(R, F, h, d)``: no head-split copies, a whole-tensor softmax,
and one matmul per sequence over all heads with the per-head ``d x d`` blocks on the diagonal (on the CPU a batch of
thousands of 4x4 matmuls and a softmax over 4 values are mostly per-call overhead). Both keep the state in the same ``(R*h, d, d)`` layout, so a state moves between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..layers.embeddings import SinusoidalTable
from ..layers.feedforward import FeedForward

MEMORY_DECAY = 0.9
NORMALISER_FLOOR = 1e-10  # the original's clamp on q . Zt (applied in fp32, see the module docstring)
# head widths up to this use the token layout: measured 1.7-2x faster per layer at widths 4-8; its block-diagonal
# matmuls cost h times the products, so wide heads (the released model's 40) keep the heads-as-rows path
SMALL_HEAD_WIDTH = 8


@dataclass
class MemoryState:
    """Memory of one linear-attention layer: ``kv (rows, d, d)`` and ``z (rows, 1, d)``; rows = sequences x heads."""

    kv: torch.Tensor | None = None
    z: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.kv is None

    def reset(self) -> None:
        self.kv = None
        self.z = None

    def to(self, device=None, dtype: torch.dtype | None = None, non_blocking: bool = False) -> "MemoryState":
        """Move the state in place (e.g. to the CPU between clips, back to the GPU before the next one)."""
        if self.kv is not None:
            self.kv = self.kv.to(device=device, dtype=dtype, non_blocking=non_blocking)
            self.z = self.z.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return self

    def clone(self) -> "MemoryState":
        if self.kv is None:
            return MemoryState()
        return MemoryState(self.kv.clone(), self.z.clone())

    def nbytes(self) -> int:
        if self.kv is None:
            return 0
        return self.kv.numel() * self.kv.element_size() + self.z.numel() * self.z.element_size()


def small_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over a short axis (max-shifted, as ``torch.softmax``): a few whole-tensor ops, where the fused CPU
    kernel loops row by row (about 5x slower over 4 values)."""
    e = torch.sub(x, x.amax(dim, keepdim=True)).exp_()
    return e.div_(e.sum(dim, keepdim=True))


def outer_sum(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_f k_f^T v_f`` per (sequence, head) in the token layout: ``k, v (R, F, h, d)`` -> ``(R, h, d, d)``.

    One matmul per sequence over all heads at once, ``(h*d, F) @ (F, h*d)``, of which the diagonal ``d x d`` blocks
    are the per-head sums (the same products and sums; the cross-head blocks are dropped)."""
    r, f, h, d = k.shape
    full = torch.bmm(k.view(r, f, h * d).transpose(1, 2), v.view(r, f, h * d))  # (R, h*d, h*d)
    return full.view(r, h, d, h, d).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).contiguous()


def memory_read_tokens(q: torch.Tensor, kv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """:func:`memory_read` in the token layout: ``q (R, F, h, d)``, ``kv (R, h, d, d)``, ``z (R, h, d)`` fp32 ->
    ``(R, F, h, d)`` in ``q``'s dtype (normaliser, floor and division in fp32).

    The numerator is one matmul per sequence with the heads' ``KV`` blocks on the diagonal of an ``(h*d, h*d)``
    matrix (zeros elsewhere add exact zeros)."""
    r, f, h, d = q.shape
    den = (q.float() * z.unsqueeze(1)).sum(-1, keepdim=True).clamp_(min=NORMALISER_FLOOR)  # (R, F, h, 1) fp32
    blocks = q.new_zeros(r, h, d, h, d)
    blocks.diagonal(dim1=1, dim2=3).copy_(kv.permute(0, 2, 3, 1))  # block (head, head) = KV[head]
    num = torch.bmm(q.view(r, f, h * d), blocks.view(r, h * d, h * d)).view(r, f, h, d)
    return num.float().div_(den).to(q.dtype)


def memory_read(q: torch.Tensor, kv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``out_f = q_f KVt / max(q_f . Zt, 1e-10)``: ``q (rows, F, d)``, ``kv (rows, d, d)``, ``z (rows, 1, d)`` ->
    ``(rows, F, d)`` in ``q``'s dtype.

    The numerator stays in the model dtype (a single matmul, accumulated in fp32 by the kernels); the normaliser,
    its floor and the division run in fp32, so the floor means the same in every dtype (in fp16 1e-10 rounds to 0).
    """
    den = torch.bmm(q.float(), z.float().transpose(1, 2)).clamp_(min=NORMALISER_FLOOR)  # (rows, F, 1) fp32
    num = torch.bmm(q, kv.to(q.dtype))
    return num.float().div_(den).to(q.dtype)


class MemoryLinearAttention(nn.Module):
    """One memory linear-attention layer (``attention_blocks.j``) with its own :class:`MemoryState`."""

    def __init__(self, dim: int, heads: int, dim_head: int, positional_encoding: bool = False, max_len: int = 24):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.pos_encoder = SinusoidalTable(dim, max_len) if positional_encoding else None  # x + pe[:, :F]
        self.memory = MemoryState()

    def reset_memory(self) -> None:
        self.memory.reset()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # (R, L, h*d) -> (R*h, L, d), row r*h + head
        r, n, _ = t.shape
        return t.view(r, n, self.heads, self.dim_head).transpose(1, 2).reshape(r * self.heads, n, self.dim_head)

    @property
    def small_heads(self) -> bool:
        """Whether this layer computes in the token layout (see the module docstring)."""
        return self.dim_head <= SMALL_HEAD_WIDTH

    def _update_memory(self, motion: torch.Tensor) -> None:
        # motion: (R, N, C) normalised past-frame tokens, oldest first
        r, n, _ = motion.shape
        h, d = self.heads, self.dim_head
        if self.small_heads:  # token layout (R, N, h, d)
            km = small_softmax(self.to_k(motion).view(r, n, h, d), dim=1)  # softmax over the N past frames
            vm = self.to_v(motion).view(r, n, h, d)
            shape = (1, n, 1, 1)
        else:  # heads as rows (R*h, N, d)
            km = torch.softmax(self._heads(self.to_k(motion)), dim=-2)
            vm = self._heads(self.to_v(motion))
            shape = (1, n, 1)
        w = MEMORY_DECAY ** torch.arange(n - 1, -1, -1, device=km.device, dtype=km.dtype)  # newest frame weight 1
        km = km * w.view(shape)
        vm = vm * w.view(shape)
        if self.small_heads:
            kv_new = outer_sum(km, vm).view(r * h, d, d)  # w^2 on each outer product
        else:
            kv_new = torch.einsum("bij,bik->bjk", km, vm)  # (R*h, d, d)
        z_new = km.sum(dim=1, dtype=torch.float32).view(r * h, 1, d)  # summed in fp32
        if self.memory.empty:
            self.memory.kv, self.memory.z = kv_new, z_new.to(km.dtype)
        else:
            keep = MEMORY_DECAY ** n
            # one fused op (half-precision math runs in fp32 inside it): no fp32 copy of the (R*h, d, d) state
            self.memory.kv = torch.add(kv_new, self.memory.kv, alpha=keep)
            self.memory.z = (self.memory.z.float() * keep + z_new).to(km.dtype)

    def needs_motion(self, is_new_audio: bool, update_past_memory: bool) -> bool:
        """Whether a call with these flags reads the past frames (else ``motion`` may be None)."""
        return is_new_audio or update_past_memory or self.memory.empty

    def forward(self, x: torch.Tensor, motion: torch.Tensor | None, is_new_audio: bool = True,
                update_past_memory: bool = False) -> torch.Tensor:
        """``x (R, F, C)`` current-clip sequences, ``motion (R, N, C)`` past frames (same rows) -> ``(R, F, C)``.

        A state that is empty when neither flag asks for an update (the original would fail) is built from ``motion``.
        ``motion`` is only read when the memory is updated (:meth:`needs_motion`).
        """
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        r, f, _ = x.shape
        h, d = self.heads, self.dim_head
        if self.small_heads:  # token layout (R, F, h, d)
            q = small_softmax(self.to_q(x).view(r, f, h, d), dim=-1).mul_(self.scale)  # over each head's d features
            k = small_softmax(self.to_k(x).view(r, f, h, d), dim=1)  # over the F frames
            v = self.to_v(x).view(r, f, h, d)
        else:  # heads as rows (R*h, F, d)
            q = torch.softmax(self._heads(self.to_q(x)), dim=-1) * self.scale
            k = torch.softmax(self._heads(self.to_k(x)), dim=-2)
            v = self._heads(self.to_v(x))

        if is_new_audio:
            self.memory.reset()
        elif not self.memory.empty and (self.memory.kv.device != k.device or self.memory.kv.dtype != k.dtype):
            self.memory.to(k.device, k.dtype)  # e.g. offloaded to the CPU between clips
        if is_new_audio or update_past_memory or self.memory.empty:
            if motion is None:
                raise ValueError("the temporal memory needs the past frames for this update")
            self._update_memory(motion)

        if self.small_heads:
            kv = torch.add(outer_sum(k, v), self.memory.kv.view(r, h, d, d), alpha=MEMORY_DECAY)  # (R, h, d, d)
            z = (MEMORY_DECAY * self.memory.z.float()).view(r, h, d) + k.sum(dim=1, dtype=torch.float32)  # (R, h, d)
            out = memory_read_tokens(q, kv, z).view(r, f, h * d)  # heads already merged
        else:
            kv = torch.baddbmm(self.memory.kv, k.transpose(1, 2), v, beta=MEMORY_DECAY)  # (R*h, d, d)
            z = MEMORY_DECAY * self.memory.z.float() + k.sum(dim=-2, keepdim=True, dtype=torch.float32)  # (R*h, 1, d)
            out = memory_read(q, kv, z)  # (R*h, F, d)
            out = out.view(r, h, f, d).transpose(1, 2).reshape(r, f, h * d)
        return self.to_out[0](out)


class TemporalLinearAttnBlock(nn.Module):
    """Two memory attention layers (pre-LayerNorm, residual; keys/values of the past frames always from the ORIGINAL
    projected motion tokens re-normalised by each layer's own norm) and a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, num_attention_blocks: int = 2,
                 positional_encoding: bool = False, max_len: int = 24):
        super().__init__()
        self.attention_blocks = nn.ModuleList([
            MemoryLinearAttention(dim, heads, dim_head, positional_encoding, max_len)
            for _ in range(num_attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, motion, is_new_audio=True, update_past_memory=False):
        # x: (R, F, C), motion: (R, N, C) or None when no layer reads it (no memory update)
        for attn, norm in zip(self.attention_blocks, self.norms):
            past = norm(motion) if attn.needs_motion(is_new_audio, update_past_memory) else None
            x = attn(norm(x), past, is_new_audio, update_past_memory).add_(x)  # residuals into the fresh outputs
        return self.ff(self.ff_norm(x)).add_(x)


class TemporalLinearAttnTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, num_layers: int, num_attention_blocks: int,
                 positional_encoding: bool, max_len: int, groups: int = 32):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([
            TemporalLinearAttnBlock(inner, heads, dim_head, num_attention_blocks, positional_encoding, max_len)
            for _ in range(num_layers)])
        self.proj_out = nn.Linear(inner, channels)

    def tokens(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-frame rows ``(B*F, C, H, W)`` -> normalised, projected temporal sequences ``(B*H*W, F, inner)``."""
        bf, c, h, w = x.shape
        frames = bf // batch
        # one layout copy: the normalised rows straight into sequence order (b, pixel, frame), then the per-token
        # projection (same values in any token order)
        y = self.norm(x).view(batch, frames, c, h * w).permute(0, 3, 1, 2).reshape(batch * h * w, frames, c)
        return self.proj_in(y)  # (B*H*W, F, inner)


@dataclass
class MotionModuleConfig:
    """``motion_module_kwargs`` of ``diffusion_net/config.json``."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = False
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1

    @classmethod
    def from_dict(cls, config: dict | None) -> "MotionModuleConfig":
        config = dict(config or {})
        config.pop("zero_initialize", None)
        unknown = set(config) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"motion_module_kwargs: unsupported keys {sorted(unknown)}")
        if "attention_block_types" in config:
            config["attention_block_types"] = tuple(config["attention_block_types"])
            for name in config["attention_block_types"]:
                if name != "Temporal_Self":
                    raise ValueError(f"motion_module_kwargs: unsupported attention block type {name!r} "
                                     "(MEMO uses Temporal_Self memory attention only)")
        return cls(**config)


class MemoryTemporalModule(nn.Module):
    """The whole temporal module (``motion_modules.<k>``): GroupNorm -> proj_in -> memory transformer -> proj_out +
    residual. ``hidden (B, C, F, H, W)``, ``motion (B, C, N, H, W)`` (the N past frames' features, oldest first)."""

    def __init__(self, channels: int, config: MotionModuleConfig | None = None, groups: int = 32):
        super().__init__()
        cfg = config or MotionModuleConfig()
        heads = cfg.num_attention_heads
        dim_head = channels // heads // cfg.temporal_attention_dim_div
        self.temporal_transformer = TemporalLinearAttnTransformer(
            channels, heads, dim_head, cfg.num_transformer_block, len(cfg.attention_block_types),
            cfg.temporal_position_encoding, cfg.temporal_position_encoding_max_len, groups)

    def memory_layers(self) -> Iterator[MemoryLinearAttention]:
        for block in self.temporal_transformer.transformer_blocks:
            yield from block.attention_blocks

    def reset_memory(self) -> None:
        for layer in self.memory_layers():
            layer.reset_memory()

    def forward_rows(self, x: torch.Tensor, motion, batch: int, is_new_audio: bool = True,
                     update_past_memory: bool = False, cache: dict | None = None) -> torch.Tensor:
        """Per-frame rows: ``x (B*F, C, H, W)``, ``motion (B*N, C, H, W)`` (or a function returning it, called only
        when a memory update reads it) -> ``(B*F, C, H, W)``.

        ``cache``: a dict kept across calls with the same motion frames (e.g. the steps of one clip). A state built
        from the motion frames alone (``is_new_audio``, or every layer empty) is then computed once and reused:
        the layers hold the same tensors as a rebuild would give.
        """
        tt = self.temporal_transformer
        bf, c, h, w = x.shape
        frames = bf // batch
        layers = list(self.memory_layers())
        fresh = is_new_audio or all(layer.memory.empty for layer in layers)  # state = f(motion frames) only
        key = ("fresh_memory", id(self))
        if fresh and cache is not None and key in cache:
            for layer, (kv, z) in zip(layers, cache[key]):
                layer.memory = MemoryState(kv, z)
            is_new_audio = update_past_memory = False  # the state is what the rebuild would make
        past = None
        if any(layer.needs_motion(is_new_audio, update_past_memory) for layer in layers):
            m = motion() if callable(motion) else motion
            past = tt.tokens(m.to(x.dtype), batch)  # (B*H*W, N, inner)
        seq = tt.tokens(x, batch)  # (B*H*W, F, inner)
        for block in tt.transformer_blocks:
            seq = block(seq, past, is_new_audio, update_past_memory)
        if fresh and cache is not None and key not in cache:
            cache[key] = [(layer.memory.kv, layer.memory.z) for layer in layers]  # the read never changes them
        out = tt.proj_out(seq)  # (B*H*W, F, C)
        # residual added straight from the sequence layout (no separate copy back to rows)
        return torch.add(x.view(batch, frames, c, h, w), out.view(batch, h, w, frames, c).permute(0, 3, 4, 1, 2)) \
            .reshape(bf, c, h, w)

    def forward(self, hidden: torch.Tensor, motion: torch.Tensor, is_new_audio: bool = True,
                update_past_memory: bool = False) -> torch.Tensor:
        b, c, f, h, w = hidden.shape
        n = motion.shape[2]
        x = hidden.transpose(1, 2).reshape(b * f, c, h, w)
        m = motion.transpose(1, 2).reshape(b * n, c, h, w)
        out = self.forward_rows(x, m, b, is_new_audio, update_past_memory)
        return out.view(b, f, c, h, w).transpose(1, 2)
