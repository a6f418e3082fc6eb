"""HelloMeme v5 temporal module with keyframe anchors (released ``SKMotionModuleV5``, ``songkey/hm5_motion``).

Two diffusers ``AnimateDiffTransformer3D`` temporal transformers per UNet level (GroupNorm 32 over each clip,
``proj_in``, one transformer block with two self-attentions over the frame axis and a GEGLU feed-forward, a stored
32-position table ``pe``, ``proj_out``, and their own residual):

* ``attn_pad`` runs over ``[pad_first, frames..., pad_last]`` (F + 2 frames) when keyframe pads are given; the pads
  are dropped and the input is added AGAIN (the transformer already added it), so the result is ~ 2x + delta;
* ``attn1`` then runs over the F frames.

Without pads only ``attn1`` runs.
"""
from __future__ import annotations

import torch
from torch import nn


def temporal_transformer(channels: int, num_attention_heads: int = 8, max_frames: int = 32) -> nn.Module:
    """diffusers ``AnimateDiffTransformer3D`` as the released motion modules configure it."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return AnimateDiffTransformer3D(
        in_channels=channels,
        num_attention_heads=num_attention_heads,
        attention_head_dim=channels // num_attention_heads,
        dropout=0.0,
        double_self_attention=True,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=max_frames,
    )


class AnchoredMotionModule(nn.Module):
    """Temporal attention over a clip, optionally anchored by two keyframe feature maps (pads).

    Args:
        in_channels: C of the UNet level.
        num_attention_heads: heads (dim_head = C // heads).
    """

    def __init__(self, in_channels: int, num_attention_heads: int = 8):
        super().__init__()
        self.attn1 = temporal_transformer(in_channels, num_attention_heads)
        self.attn_pad = temporal_transformer(in_channels, num_attention_heads)

    def forward(self, hidden_states: torch.Tensor, pad_states: torch.Tensor | None, temb: torch.Tensor | None,
                num_frames: int) -> torch.Tensor:
        # hidden_states: (B*F, C, H, W); pad_states: (B, C, 2, H, W) = [first, last] keyframe features or None;
        # temb: (B*F, 1280), unused by this module -> (B*F, C, H, W)
        x = hidden_states
        if pad_states is not None:
            bf, c, h, w = hidden_states.shape
            b = bf // num_frames
            frames = hidden_states.reshape(b, num_frames, c, h, w)
            pads = pad_states.to(hidden_states.dtype).permute(0, 2, 1, 3, 4)  # (B, 2, C, H, W)
            seq = torch.cat([pads[:, :1], frames, pads[:, -1:]], dim=1)  # (B, F+2, C, H, W)
            seq = self.attn_pad(seq.reshape(b * (num_frames + 2), c, h, w), num_frames=num_frames + 2)
            seq = seq.reshape(b, num_frames + 2, c, h, w)[:, 1:-1].reshape(bf, c, h, w)
            x = seq + hidden_states  # attn_pad already holds one residual: the input counts twice (as released)
        return self.attn1(x, num_frames=num_frames)
