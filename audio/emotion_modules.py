"""MEMO emotion-aware audio module: joint video-audio attention per frame, modulated by an emotion label.

Layout (released key names, relative to ``...audio_modules.<k>.``)::

    norm                       GroupNorm(32, C, eps 1e-6), per frame
    proj_in                    Conv2d 1x1 C -> D       (D: from the HOST block's input width, not always C)
    transformer_blocks.0       JointAudioBlock (width D, audio width A, 8 heads)
    proj_out                   Conv2d 1x1 D -> C

JointAudioBlock with label ``e`` (video tokens ``x (B*F, H*W, D)``, audio tokens ``a (B*F, T, A)``)::

    n  = norm1(x, e);            an = audio_norm1(a, e)          EmoAdaLN
    x += attn1(n);               a += audio_attn1(an)            self-attention (audio: query A, inner D, out A)
    n  = norm2(x, e);            an = audio_norm2(a, e)
    x', a' = attn2(n, an)                                        one attention over [video ; audio] tokens
    x += x';                     a += a'                         (a' via to_add_out, D -> A)
    x += ff(norm3(x));           a += audio_ff(audio_norm3(a))

The final audio module of the network has no ``attn2.to_add_out``, ``audio_ff``, ``audio_norm3`` and returns no
audio. The module's audio output is the block's audio output PLUS the module's audio input (an extra outer residual);
it is carried to the next audio module.

EmoAdaLN(x, e): ``emb = class_embedder.embedding_table[e]`` (classes 0..8 and the null class 9),
``shift, scale = chunk(adaLN_modulation(emb))`` (SiLU -> Linear, shift first), ``LN(x) * (1 + scale) + shift`` with a
non-affine LayerNorm. One label per batch element covers that element's consecutive frame rows; one label broadcasts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import Attention, multihead_attention
from ..layers.feedforward import FeedForward

NUM_EMOTIONS = 9
NULL_EMOTION = 9


class LabelEmbedding(nn.Module):
    """``embedding_table``: 9 emotion rows plus the null row (index 9) when the model was trained with label drop."""

    def __init__(self, num_classes: int, dim: int, with_null: bool = True):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(with_null), dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels.long())


class EmoAdaLayerNorm(nn.Module):
    def __init__(self, dim: int, num_classes: int = NUM_EMOTIONS, with_null: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.class_embedder = LabelEmbedding(num_classes, dim, with_null)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        # x: (R, L, dim); emotion: (n,) labels, n = 1 (broadcast) or n dividing R (label b -> rows b*R/n ..)
        emotion = emotion.reshape(-1).to(x.device)
        shift, scale = self.adaLN_modulation(self.class_embedder(emotion)).to(x.dtype).chunk(2, dim=1)
        if emotion.shape[0] > 1:
            reps = x.shape[0] // emotion.shape[0]
            shift = shift.repeat_interleave(reps, dim=0)
            scale = scale.repeat_interleave(reps, dim=0)
        x = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        return x * (1 + scale[:, None]) + shift[:, None]


class JointAttention(nn.Module):
    """Attention over the concatenation ``[video tokens ; audio tokens]`` (video q/k/v ``to_q/to_k/to_v`` D -> D
    without bias, audio ``add_q_proj/add_k_proj/add_v_proj`` A -> D with bias), split back: video -> ``to_out.0``,
    audio -> ``to_add_out`` (D -> A; absent in the final block)."""

    def __init__(self, dim: int, audio_dim: int, heads: int, dim_head: int, is_final: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.is_final = is_final
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.add_q_proj = nn.Linear(audio_dim, inner)
        self.add_k_proj = nn.Linear(audio_dim, inner)
        self.add_v_proj = nn.Linear(audio_dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        if not is_final:
            self.to_add_out = nn.Linear(inner, audio_dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (R, S, D), audio: (R, T, A) -> (R, S, D), (R, T, A) or None
        s = x.shape[1]
        q = torch.cat([self.to_q(x), self.add_q_proj(audio)], dim=1)
        k = torch.cat([self.to_k(x), self.add_k_proj(audio)], dim=1)
        v = torch.cat([self.to_v(x), self.add_v_proj(audio)], dim=1)
        out = multihead_attention(q, k, v, self.heads)
        video_out = self.to_out[0](out[:, :s])
        audio_out = None if self.is_final else self.to_add_out(out[:, s:])
        return video_out, audio_out


class JointAudioBlock(nn.Module):
    """``transformer_blocks.0`` of an audio module (see the module docstring)."""

    def __init__(self, dim: int, audio_dim: int, heads: int, dim_head: int, is_final: bool = False,
                 emotion_null_class: bool = True):
        super().__init__()
        self.is_final = is_final
        self.norm1 = EmoAdaLayerNorm(dim, with_null=emotion_null_class)
        self.attn1 = Attention(dim, heads, dim_head)
        self.audio_norm1 = EmoAdaLayerNorm(audio_dim, with_null=emotion_null_class)
        self.audio_attn1 = Attention(audio_dim, heads, dim_head)  # query A -> inner heads*dim_head -> out A
        self.norm2 = EmoAdaLayerNorm(dim, with_null=emotion_null_class)
        self.audio_norm2 = EmoAdaLayerNorm(audio_dim, with_null=emotion_null_class)
        self.attn2 = JointAttention(dim, audio_dim, heads, dim_head, is_final)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)
        if not is_final:
            self.audio_ff = FeedForward(audio_dim)
            self.audio_norm3 = nn.LayerNorm(audio_dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor):
        # x: (R, S, D) video tokens, audio: (R, T, A), emotion: (n,) -> (R, S, D), (R, T, A) or None
        x = self.attn1(self.norm1(x, emotion)) + x
        audio = self.audio_attn1(self.audio_norm1(audio, emotion)) + audio
        video_out, audio_out = self.attn2(self.norm2(x, emotion), self.audio_norm2(audio, emotion))
        x = video_out + x
        x = self.ff(self.norm3(x)) + x
        if self.is_final:
            return x, None
        audio = audio_out + audio
        audio = self.audio_ff(self.audio_norm3(audio)) + audio
        return x, audio


class AudioModule(nn.Module):
    """``audio_modules.<k>``: GroupNorm -> 1x1 conv C -> D -> :class:`JointAudioBlock` -> 1x1 conv D -> C + residual.

    ``inner_dim`` D = ``heads * (host_in_channels // heads)``; ``dim_head = host_in_channels // heads``.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, audio_dim: int, groups: int = 32,
                 is_final: bool = False, emotion_null_class: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.is_final = is_final
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [JointAudioBlock(inner, audio_dim, heads, dim_head, is_final, emotion_null_class)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward_rows(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor):
        """Per-frame rows: ``x (B*F, C, H, W)``, ``audio (B*F, T, A)`` -> ``(B*F, C, H, W)``, ``(B*F, T, A)`` or None."""
        r, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(r, h * w, inner)  # token y*W + x
        y, audio_out = self.transformer_blocks[0](y, audio, emotion)
        y = y.reshape(r, h, w, inner).permute(0, 3, 1, 2)
        out = self.proj_out(y) + x
        if self.is_final:
            return out, None
        return out, audio_out + audio

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor):
        """``hidden (B, C, F, H, W)``; ``audio (B, F, T, A)`` (first module) or ``(B*F, T, A)`` (carried stream);
        ``emotion (B,)`` or ``(1,)`` -> ``(B, C, F, H, W)``, ``(B*F, T, A)`` or None (final module)."""
        b, c, f, h, w = hidden.shape
        if audio.dim() == 4:
            audio = audio.reshape(b * f, *audio.shape[2:])
        x = hidden.transpose(1, 2).reshape(b * f, c, h, w)
        out, audio_out = self.forward_rows(x, audio.to(x.dtype), emotion)
        return out.view(b, f, c, h, w).transpose(1, 2), audio_out
