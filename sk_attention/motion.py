"""HelloMeme v5 temporal module with keyframe anchors (released ``SKMotionModuleV5``, ``songkey/hm5_motion``).

Two diffusers ``AnimateDiffTransformer3D`` temporal transformers per UNet level (GroupNorm 32 over each clip,
``proj_in``, one transformer block with two self-attentions over the frame axis and a GEGLU feed-forward, a stored
32-position table ``pe``, ``proj_out``, and their own residual):

* ``attn_pad`` runs over ``[pad_first, frames..., pad_last]`` (F + 2 frames) when keyframe pads are given; the pads
  are dropped and the input is added AGAIN (the transformer already added it), so the result is ~ 2x + delta;
* ``attn1`` then runs over the F frames.

Without pads only ``attn1`` runs.

The transformers run through :func:`temporal_attention` (the diffusers forward's computation, op for op, on the
released submodules; plain attention computed directly, see :func:`_attention`) so that ``attn_pad`` computes the
pads' positions only where the kept frames need them: the pads are keys/values of both self-attentions, but the
second attention's queries, the feed-forward and ``proj_out``
run on the F kept frames only (their outputs are dropped).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import multihead_attention


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


def temporal_attention(transformer: nn.Module, clip: torch.Tensor, keep: slice = slice(None)) -> torch.Tensor:
    """A diffusers ``AnimateDiffTransformer3D`` (layer-norm blocks with two self-attentions, as
    :func:`temporal_transformer` builds it) on a clip, returning only the frames ``keep``.

    clip: (B, F, C, H, W) -> (B, F', C, H, W) with F' the kept frames; ``transformer(x, num_frames=F)`` on the same
    clip flattened to '(b f)' gives the same values at the kept frames. Every frame is a key/value of every attention;
    the last block's second attention queries, feed-forward, ``proj_out`` and residual run on the kept frames only.
    """
    b, f, c, h, w = clip.shape
    # GroupNorm over each clip (B, C, F, H, W) -> tokens (B*H*W, F, C)
    tokens = transformer.norm(clip.permute(0, 2, 1, 3, 4)).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)
    x = transformer.proj_in(tokens)
    blocks = transformer.transformer_blocks
    for i, block in enumerate(blocks):
        x = _block(block, x, keep if i == len(blocks) - 1 else slice(None))
    x = transformer.proj_out(x)  # (B*H*W, F', C)
    x = x.reshape(b, h, w, x.shape[1], c).permute(0, 3, 4, 1, 2).contiguous()  # (B, F', C, H, W)
    return x + clip[:, keep]


def _block(block: nn.Module, x: torch.Tensor, keep: slice) -> torch.Tensor:
    """diffusers ``BasicTransformerBlock`` (layer norms, sinusoidal positions, self-attention ``attn1``, self-attention
    ``attn2`` (double_self_attention), GEGLU ``ff``) on tokens (N, F, C) -> (N, F', C), F' the ``keep`` frames:
    ``attn2``'s queries and everything after it only for those."""
    pe = block.pos_embed
    x = _attention(block.attn1, pe(block.norm1(x))) + x
    kv = pe(block.norm2(x))  # (N, F, C): keys and values of every frame
    if keep == slice(None):
        x = _attention(block.attn2, kv) + x
    else:
        x = x[:, keep]
        x = _attention(block.attn2, kv[:, keep], kv) + x
    return block.ff(block.norm3(x)) + x


# processors computing plain multi-head attention (diffusers' SDPA one, the speed options' kernel one)
_PLAIN_PROCESSORS = frozenset({"AttnProcessor2_0", "KernelAttnProcessor"})


def _attention(attn: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """A diffusers ``Attention`` of the temporal transformers (to_q/to_k/to_v, to_out.0, no norms, no residual) on
    tokens x (N, Lq, C) with keys/values from ``context`` (N, Lk, C) (default x) -> (N, Lq, C).

    Computed here, with the kernel of :func:`...layers.attention.attention` (the speed options' choice), when its
    processor is a plain one: the same values as the processor, without the module's per-call processing of its
    arguments (a signature inspection per call, a large share of these small calls). Other processors run as set.
    """
    if type(attn.processor).__name__ not in _PLAIN_PROCESSORS or attn.norm_q is not None or attn.residual_connection:
        return attn(x, encoder_hidden_states=context)
    context = x if context is None else context
    out = attn.to_out[0](multihead_attention(attn.to_q(x), attn.to_k(context), attn.to_v(context), attn.heads))
    return out if attn.rescale_output_factor == 1 else out / attn.rescale_output_factor


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
        bf, c, h, w = hidden_states.shape
        b = bf // num_frames
        frames = hidden_states.reshape(b, num_frames, c, h, w)
        x = frames
        if pad_states is not None:
            pads = pad_states.to(hidden_states.dtype).transpose(1, 2)  # (B, 2, C, H, W)
            seq = torch.cat([pads[:, :1], frames, pads[:, 1:]], dim=1)  # (B, F+2, C, H, W)
            # the pads' outputs are dropped; attn_pad already holds one residual: the input counts twice (as released)
            x = temporal_attention(self.attn_pad, seq, keep=slice(1, num_frames + 1)) + frames
        return temporal_attention(self.attn1, x).reshape(bf, c, h, w)
