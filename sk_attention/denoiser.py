"""The spatial-knitting (SK) denoiser of HelloMeme v3+ (the ``HM3Denoising3D`` forward), used for every v5 role.

An SD1.5 ``UNet2DConditionModel`` run on frame batches, with three kinds of features injected:

* **control** (``down3_i`` / ``up3_i``, (B, C, F, h, w)): ``down3_i`` is added to the output of down block ``i``, which
  is also that block's last skip connection, so the control reaches the up path twice (the original adds it in place
  to the shared tensor; this is reproduced explicitly). ``up3_i`` is added to the input of up block ``i``.
* **reference** (``up_i``, (B, C, h, w)): the cache of the reference UNet, consumed by the reference adapter's
  ``reference_modules_up[i]`` before up block ``i``. No reference injection in the down path or the mid block.
* **motion** (video): ``motion_down[i]`` after down block ``i`` (after its control; the skip keeps the pre-motion
  tensor) and ``motion_up[i]`` before up block ``i`` (after control and reference), optionally anchored by pads
  (``down_i`` / ``up_i``, (B, C, 2, h, w)): reference-UNet features of a window's first and last keyframe.

The same class plays the **reference UNet**: run at t = 0 on the reference latent (F = 1) with no adapters (v5c also
passes the reference-side control), it returns its *cache*: the output of every down block and the input of every up
block, each taken before the control of that point is added.

The adapters are held beside the UNet (``self.reference``, ``self.motion``) and never merged into it, so the UNet is
loadable from any SD1.5 checkpoint and the adapters from their released folders.

Layout: frames of a clip are contiguous in the flattened batch ("(b f)" order); time and text embeddings are repeated
per frame.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

FeatureDict = Mapping[str, torch.Tensor]


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> (B·F, C, h, w), frames of a clip contiguous."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def batch_to_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B·F, C, h, w) -> (B, C, F, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


class DeepFeature:
    """One denoiser call site's stored deep feature for feature reuse across steps (DeepCache-style): the input of
    the last up block, kept on ``store_device`` (the host by default, so a long video's windows do not hold
    accelerator memory). ``reuse`` says whether the next call may use it instead of the deep blocks."""

    def __init__(self, store_device: torch.device | str = "cpu"):
        self.store_device = torch.device(store_device)
        self.tensor: Optional[torch.Tensor] = None
        self.reuse = False

    def store(self, h: torch.Tensor) -> None:
        self.tensor = h.detach().to(self.store_device, copy=True)

    def load(self, device, dtype) -> torch.Tensor:
        if self.tensor is None:
            raise RuntimeError("feature reuse asked before a full step stored the deep feature")
        return self.tensor.to(device=device, dtype=dtype)


class SKDenoiser(nn.Module):
    """SD1.5 UNet + optional reference adapter (``reference_modules_up``) + optional motion adapter
    (``motion_down`` / ``motion_up``).

    ``forward(sample (B,4,F,h,w), timestep, text (B,T,D) | (B,F,T,D), reference_cache, control, motion_pads,
    use_motion) -> (noise_pred (B,4,F,h,w), cache {down_i, up_i: (B·F, C, h_i, w_i)})``.
    """

    def __init__(self, unet: nn.Module, reference: Optional[nn.Module] = None, motion: Optional[nn.Module] = None):
        super().__init__()
        self.unet = unet
        self.reference = reference
        self.motion = motion

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _time_embedding(self, batch: int, timestep, like: torch.Tensor) -> torch.Tensor:
        """(B, time_embed_dim) embedding of the timestep (scalar or (B,)).

        A scalar timestep is embedded once and broadcast, so every sample of the batch gets bit-identical time
        features whatever the batch size (the batched matmul may round differently per batch size, and the tiny
        differences are amplified where a GroupNorm normalises an almost constant map, e.g. the zero latent of the
        CFG reference pass).
        """
        unet = self.unet
        if not torch.is_tensor(timestep):
            if isinstance(timestep, float):
                dtype = torch.float32 if like.device.type in ("mps", "npu") else torch.float64
            else:
                dtype = torch.int64
            timestep = torch.tensor([timestep], dtype=dtype, device=like.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(like.device)
        else:
            timestep = timestep.to(like.device)
        uniform = timestep.numel() == 1
        t = unet.time_proj(timestep.reshape(-1)[:1] if uniform else timestep.expand(batch)).to(like.dtype)
        emb = unet.time_embedding(t, None)
        if getattr(unet, "time_embed_act", None) is not None:
            emb = unet.time_embed_act(emb)
        return emb.expand(batch, -1) if uniform else emb

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        return frames_to_batch(x.to(device=self.device, dtype=self.dtype))

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        text: torch.Tensor,
        reference_cache: Optional[FeatureDict] = None,
        control: Optional[FeatureDict] = None,
        motion_pads: Optional[FeatureDict] = None,
        use_motion: bool = False,
        collect_cache: bool = True,
        cache_only: bool = False,
        deep: Optional[DeepFeature] = None,
    ) -> tuple[Optional[torch.Tensor], dict[str, torch.Tensor]]:
        """Run the denoiser.

        sample: (B, 4, F, h, w) latents (already scaled by the scheduler). text: (B, T, D) repeated per frame, or
        (B, F, T, D) per frame. reference_cache: {up_i: (B, C, h_i, w_i)} (or (B·F, ...)). control: {down3_i, up3_i:
        (B, C, F, h_i, w_i)}. motion_pads: {down_i, up_i: (B, C, 2, h_i, w_i)} or None. ``collect_cache`` returns
        the cache; ``cache_only`` stops once the cache is complete (the reference role) and returns ``(None, cache)``.
        ``deep`` (opt-in feature reuse, DeepCache-style): a full call stores the input of the last up block in it; a
        call with ``deep.reuse`` set runs only ``conv_in``, down block 0 (its skips) and the last up block, on the
        stored feature. Never used by the reference role.
        """
        unet = self.unet
        dtype, device = self.dtype, self.device
        b, _, num_frames, height, width = sample.shape
        sample = sample.to(device=device, dtype=dtype)
        control = control or {}
        if use_motion and self.motion is None:
            raise RuntimeError("use_motion=True but this denoiser has no motion adapter")
        if reference_cache is not None and self.reference is None and any(k.startswith("up_") for k in reference_cache):
            raise RuntimeError("a reference cache was given but this denoiser has no reference adapter")

        # 1. time and text, repeated per frame: (B·F, E), (B·F, T, D)
        emb = self._time_embedding(b, timestep, sample).repeat_interleave(num_frames, dim=0)
        text = text.to(device=device, dtype=dtype)
        if text.ndim == 3:
            text = text.repeat_interleave(num_frames, dim=0)
        elif text.ndim == 4:
            text = text.reshape(-1, *text.shape[2:])
        else:
            raise ValueError(f"text embeddings must be (B, T, D) or (B, F, T, D), got {tuple(text.shape)}")

        def ctrl(key: str) -> Optional[torch.Tensor]:
            c = control.get(key)
            return None if c is None else self._frames(c)

        def pad(key: str) -> Optional[torch.Tensor]:
            if motion_pads is None:
                return None
            return motion_pads[key].to(device=device, dtype=dtype)

        cache: dict[str, torch.Tensor] = {}

        # 2. down path: (B·F, C, h, w)
        h = unet.conv_in(frames_to_batch(sample))
        skips: tuple[torch.Tensor, ...] = (h,)
        if deep is not None and deep.reuse:
            return self._shallow(h, emb, text, deep, ctrl, pad, reference_cache, use_motion, num_frames), cache
        for i, block in enumerate(unet.down_blocks):
            h, res = self._down(block, h, emb, text)
            if collect_cache:
                cache[f"down_{i}"] = h.clone()
            c = ctrl(f"down3_{i}")
            if c is not None:
                # The block output is also its last skip tensor: the control enters both (the original's in-place
                # add on the shared tensor).
                h = h + c
                res = tuple(res[:-1]) + (h,)
            if use_motion:
                h = self.motion.motion_down[i](h, pad(f"down_{i}"), emb, num_frames)
            skips += tuple(res)

        # 3. mid
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                h = unet.mid_block(h, emb, encoder_hidden_states=text)
            else:
                h = unet.mid_block(h, emb)

        # 4. up path; the upsample size is forwarded when the latent is not a multiple of the total down factor
        forward_upsample_size = any(s % (2 ** unet.num_upsamplers) != 0 for s in (height, width))
        last = len(unet.up_blocks) - 1
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[2:] if (i < last and forward_upsample_size) else None
            if collect_cache:
                cache[f"up_{i}"] = h.clone()
                if cache_only and i == last:
                    return None, cache
            if deep is not None and i == last:
                deep.store(h)
            h = self._up(i, h, emb, text, res, upsample_size, ctrl, pad, reference_cache, use_motion, num_frames)
        return self._out(h, num_frames), cache

    @staticmethod
    def _down(block, h, emb, text):
        """A down block (text for its cross-attention where it has one) -> (output, skip tensors)."""
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=emb, encoder_hidden_states=text)
        return block(hidden_states=h, temb=emb)

    def _up(self, i, h, emb, text, res, upsample_size, ctrl, pad, reference_cache, use_motion, num_frames):
        """Up block ``i`` with what enters before it: control, reference knitting, motion."""
        c = ctrl(f"up3_{i}")
        if c is not None:
            h = h + c
        if reference_cache is not None and self.reference is not None and f"up_{i}" in reference_cache:
            ref = reference_cache[f"up_{i}"].to(device=self.device, dtype=self.dtype)
            h = self.reference.reference_modules_up[i](h, ref, num_frames)
        if use_motion:
            h = self.motion.motion_up[i](h, pad(f"up_{i}"), emb, num_frames)
        block = self.unet.up_blocks[i]
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=text,
                         upsample_size=upsample_size)
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)

    def _out(self, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B·F, C, h, w) -> noise prediction (B, 4, F, h, w)."""
        unet = self.unet
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return batch_to_frames(unet.conv_out(h), num_frames)

    def _shallow(self, h, emb, text, deep: "DeepFeature", ctrl, pad, reference_cache, use_motion, num_frames):
        """A reuse call: down block 0 gives the last up block's skips (``conv_in`` and its resnets' outputs, which the
        control does not touch); the deeper blocks are replaced by the stored input of the last up block."""
        unet = self.unet
        _, res = self._down(unet.down_blocks[0], h, emb, text)
        last = len(unet.up_blocks) - 1
        n = len(unet.up_blocks[last].resnets)
        skips = ((h,) + tuple(res))[:n]
        deep_h = deep.load(device=self.device, dtype=self.dtype)
        h = self._up(last, deep_h, emb, text, skips, None, ctrl, pad, reference_cache, use_motion, num_frames)
        return self._out(h, num_frames)

    @torch.no_grad()
    def reference_features(self, latent: torch.Tensor, text: torch.Tensor,
                           control: Optional[FeatureDict] = None) -> dict[str, torch.Tensor]:
        """The reference role: cache of ``latent`` (B, 4, h, w) at t = 0 (F = 1) with ``text`` (B, T, D) and
        optional reference-side control ({down3_i, up3_i: (B, C, 1, h_i, w_i)}); returns {down_i, up_i: (B, C, h_i,
        w_i)}. Stops before the last up block (its output is not needed)."""
        _, cache = self(latent[:, :, None], 0, text, control=control, collect_cache=True, cache_only=True)
        return cache
