"""HelloMeme v3/v4 temporal module with keyframe anchors (released ``SKMotionModule``, ``songkey/hm3_motion`` and
``songkey/hm4_motion``).

One attention over the frame axis of each pixel, anchored by two keyframe feature maps (pads):

1. the clip's time embedding (the UNet's, of the clip's FIRST frame) is projected to C (``time_emb_proj``);
2. the sequence ``[pad_first, frames..., pad_last]`` (F + 2 positions), plus that embedding, becomes tokens
   (B*H*W, F+2, C);
3. ``ff(temp_attn(norm(tokens + pe[:F+2])))``: stored position table ``pos_embed_t.pe`` (1, 154, C), LayerNorm,
   self-attention, GEGLU feed-forward (inner 2C), no inner residuals;
4. the pad positions are dropped and ``out = hidden + proj(result)`` (3x3 conv). (Computed as: the pads are keys and
   values only, the F frames are the queries and the only feed-forward inputs.)

The v5 module (two AnimateDiff transformers) is :class:`~.motion.AnchoredMotionModule`; both share the call
``(hidden (B*F, C, H, W), pads (B, C, 2, H, W), temb (B*F, 1280), num_frames)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import Attention
from ..layers.embeddings import SinusoidalTable
from ..layers.feedforward import FeedForward


class AnchoredTemporalAttention(nn.Module):
    """Temporal self-attention over ``[pad_first, frames, pad_last]`` per pixel, with a residual 3x3 projection.

    Args:
        in_channels: C of the UNet level.
        num_attention_heads: heads (dim_head = C // heads).
        time_embed_dim: width of the UNet time embedding (1280 for SD1.5, whatever C is).
        position_table_length: positions of the stored table ``pos_embed_t.pe`` (154 released), so F + 2 <= 154.

    The submodule names (``pos_embed_t``, ``time_emb_proj``, ``temp_attn``, ``norm``, ``ff``, ``proj``) are the
    released state-dict keys. ``temp_attn`` is built as a cross-attention of width C (same shapes as a
    self-attention) and called as a self-attention.
    """

    def __init__(self, in_channels: int, num_attention_heads: int = 8, time_embed_dim: int = 1280,
                 position_table_length: int = 154, norm_eps: float = 1e-5):
        super().__init__()
        self.pos_embed_t = SinusoidalTable(in_channels, position_table_length)
        self.time_emb_proj = nn.Linear(time_embed_dim, in_channels)
        self.temp_attn = Attention(in_channels, num_attention_heads, in_channels // num_attention_heads,
                                   context_dim=in_channels)
        self.norm = nn.LayerNorm(in_channels, eps=norm_eps)
        self.ff = FeedForward(in_channels, inner_dim=in_channels * 2)
        self.proj = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor, pad_states: torch.Tensor, temb: torch.Tensor,
                num_frames: int) -> torch.Tensor:
        # hidden_states: (B*F, C, H, W); pad_states: (B, C, 2, H, W) = [first, last] keyframe features;
        # temb: (B*F, time_embed_dim) -> (B*F, C, H, W)
        if pad_states is None:
            raise ValueError("the v3/v4 motion module (SKMotionModule) needs keyframe pad states: it has no path "
                             "without them")
        bf, c, h, w = hidden_states.shape
        b = bf // num_frames
        if b * num_frames != bf or pad_states.shape[0] != b:
            raise ValueError(f"features batch {bf} is not {pad_states.shape[0]} clip(s) of {num_frames} frame(s)")
        # the time embedding of each clip's first frame, projected: (B, 1, 1, 1, C)
        first = temb.reshape(b, num_frames, -1)[:, 0].to(hidden_states.dtype)
        t = self.time_emb_proj(first)[:, None, None, None, :]
        frames = hidden_states.reshape(b, num_frames, c, h, w)
        pads = pad_states.to(hidden_states.dtype).permute(0, 2, 1, 3, 4)  # (B, 2, C, H, W)
        seq = torch.cat([pads[:, :1], frames, pads[:, -1:]], dim=1)  # (B, F+2, C, H, W)
        length = num_frames + 2
        tokens = (seq.permute(0, 3, 4, 1, 2) + t).reshape(b * h * w, length, c)  # (B*H*W, F+2, C)
        tokens = self.norm(self.pos_embed_t(tokens))
        # the pad positions' outputs are dropped: only the F frames are queries (and go through ff); every position
        # stays a key and value, so the result is the same for 2 fewer queries per pixel
        out = self.ff(self.temp_attn(tokens[:, 1:-1], context=tokens))  # (B*H*W, F, C)
        out = out.reshape(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return hidden_states + self.proj(out)
