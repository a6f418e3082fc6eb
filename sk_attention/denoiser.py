"""The spatial-knitting (SK) denoiser of every HelloMeme version (the original ``HMDenoising3D`` /
``HMDenoisingMotion`` of v1/v2 and ``HM3Denoising3D`` / ``HM3DenoisingMotion`` of v3+), used for every role.

An SD1.5 ``UNet2DConditionModel`` (or, for v1-v4 video, the diffusers AnimateDiff ``UNetMotionModel`` built from it,
see :func:`animatediff_unet`) run on frame batches, with three kinds of features injected. WHERE they enter is the
version's :class:`InjectionScheme`:

* **control** ((B, C, F, h, w) maps keyed by insertion point): the scheme's down keys (v3+: ``down3_i``; v1/v2:
  ``down_i`` then ``down2_i``) are added to the output of down block ``i``, which is also that block's last skip
  connection, so the control reaches the up path twice (the original adds it in place to the shared tensor; this is
  reproduced explicitly). The up keys (v3+: ``up3_i``; v1/v2: ``up_v2_i`` then ``up2_v2_i``) are added to the input
  of up block ``i``.
* **reference** (the reference UNet's cache, (B, C, h, w) per key), knitted in by the reference adapter's blocks:
  v3+ ``reference_modules_up[i]`` before every up block ``i``; v1/v2 only at cross-attention blocks:
  ``reference_modules_down[i]`` after down block ``i`` (v1 adapters only; after its control), ``reference_modules_mid``
  after the mid block (v1) and ``reference_modules_up[j]`` before the ``j``-th cross-attention up block (up block
  ``j + first_up_block``).
* **motion** (video): v3+ adapters' ``motion_down[i]`` after down block ``i`` (after its control and reference; the
  skip keeps the pre-motion tensor) and ``motion_up[i]`` before up block ``i`` (after control and reference),
  optionally anchored by pads (``down_i`` / ``up_i``, (B, C, 2, h, w)). v1-v4 video also runs AnimateDiff temporal
  modules INSIDE every down / mid / up block of a ``UNetMotionModel`` (they always run; ``use_motion`` is about the
  HelloMeme motion adapter only).

The same class plays the **reference UNet**: run at t = 0 on the reference latent (F = 1) with no adapters (v5c also
passes the reference-side control), it returns its *cache*, each entry taken before the control of its point is
added. v3+: the output of every down block and the input of every up block (``down_0..3``, ``up_0..3``); v1/v2:
the output of the cross-attention down blocks, the mid block's output and the input of the cross-attention up blocks
(``down_0..2``, ``mid``, ``up_1..3`` in SD1.5).

The adapters are held beside the UNet (``self.reference``, ``self.motion``) and never merged into it, so the UNet is
loadable from any SD1.5 checkpoint and the adapters from their released folders.

Layout: frames of a clip are contiguous in the flattened batch ("(b f)" order); time and text embeddings are repeated
per frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from ..runtime.speed import DeepFeature  # feature reuse store, shared with MEMO (re-exported)
from .direct_attention import direct_attention

__all__ = ["DeepFeature", "InjectionScheme", "SKDenoiser", "V1_SCHEME", "V3_SCHEME", "animatediff_unet",
           "batch_to_frames", "build_denoiser", "frames_to_batch", "scheme_for"]

FeatureDict = Mapping[str, torch.Tensor]


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> (B·F, C, h, w), frames of a clip contiguous."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def batch_to_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B·F, C, h, w) -> (B, C, F, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


# ---- injection schemes -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectionScheme:
    """Where a HelloMeme version's denoiser takes its features (the difference between ``HMDenoising3D`` and
    ``HM3Denoising3D``).

    Args:
        name: the scheme's name (``v1`` serves v1 and v2, ``v3`` serves v3 to v5c).
        control_down: control key templates added, in this order, to the output of down block ``i``
            (``str.format(i)``).
        control_up: control key templates added, in this order, to the input of up block ``i``.
        cross_attention_points: True (v1/v2): the cache and the reference knitting are at the cross-attention blocks
            only, plus the mid block's output (cached as ``mid``), and the reference adapter's
            ``reference_modules_down`` / ``reference_modules_mid`` (v1 files) act after down blocks / the mid block.
            False (v3+): every down block output and every up block input is cached, references enter the up path
            only.
    """

    name: str
    control_down: tuple[str, ...]
    control_up: tuple[str, ...]
    cross_attention_points: bool


V1_SCHEME = InjectionScheme("v1", control_down=("down_{}", "down2_{}"), control_up=("up_v2_{}", "up2_v2_{}"),
                            cross_attention_points=True)
V3_SCHEME = InjectionScheme("v3", control_down=("down3_{}",), control_up=("up3_{}",), cross_attention_points=False)

SCHEMES: dict[str, InjectionScheme] = {"v1": V1_SCHEME, "v2": V1_SCHEME, "v3": V3_SCHEME, "v4": V3_SCHEME,
                                       "v5": V3_SCHEME, "v5b": V3_SCHEME, "v5c": V3_SCHEME}


def scheme_for(version: str) -> InjectionScheme:
    """The injection scheme of a HelloMeme version (``v1`` ... ``v5c``)."""
    try:
        return SCHEMES[version]
    except KeyError:
        raise ValueError(f"unknown HelloMeme version {version!r} (known: {', '.join(SCHEMES)})") from None


@dataclass(frozen=True)
class _Points:
    """A scheme applied to one UNet's blocks: per block, its cache key (None: not a feature point) and control keys.
    Built once per denoiser (plain tuples, nothing recomputed per step)."""

    down_cache: tuple[Optional[str], ...]
    down_control: tuple[tuple[str, ...], ...]
    mid_cache: Optional[str]
    up_cache: tuple[Optional[str], ...]
    up_control: tuple[tuple[str, ...], ...]
    up_ordinal: tuple[Optional[int], ...]  # position of up block i among the up feature points

    @classmethod
    def of(cls, unet: nn.Module, scheme: InjectionScheme) -> "_Points":
        def point(block) -> bool:
            return not scheme.cross_attention_points or bool(getattr(block, "has_cross_attention", False))

        down = [f"down_{i}" if point(b) else None for i, b in enumerate(unet.down_blocks)]
        up = [f"up_{i}" if point(b) else None for i, b in enumerate(unet.up_blocks)]
        ordinals, n = [], 0
        for key in up:
            ordinals.append(None if key is None else n)
            n += key is not None
        mid = "mid" if scheme.cross_attention_points and getattr(unet, "mid_block", None) is not None else None
        return cls(
            down_cache=tuple(down),
            down_control=tuple(tuple(t.format(i) for t in scheme.control_down) for i in range(len(down))),
            mid_cache=mid,
            up_cache=tuple(up),
            up_control=tuple(tuple(t.format(i) for t in scheme.control_up) for i in range(len(up))),
            up_ordinal=tuple(ordinals))


# ---- AnimateDiff (v1-v4 video) -----------------------------------------------------------------------------------


def animatediff_unet(unet: nn.Module, motion_adapter: nn.Module) -> nn.Module:
    """The diffusers AnimateDiff ``UNetMotionModel`` of ``unet`` (an SD1.5 ``UNet2DConditionModel``) with the temporal
    modules of ``motion_adapter`` (a diffusers ``MotionAdapter``, the released ``hm*_animatediff*`` files) inside its
    down / mid / up blocks, as ``UNetMotionModel.from_unet2d(unet, motion_adapter)`` builds it.

    Nothing is copied: the model is built on the meta device and takes the very parameters of ``unet`` and the adapter
    (the adapter's cast to the UNet's dtype and device where they differ), so the image UNet (the v1/v2 pre-pass in
    stylize x2) and this one are held for the price of one and move between devices together. Loading is strict: a
    key that does not fit raises, naming the keys.
    """
    from diffusers import UNetMotionModel

    if not hasattr(unet, "down_blocks") or hasattr(unet.down_blocks[0], "motion_modules"):
        raise TypeError("animatediff_unet needs a plain UNet2DConditionModel")
    with torch.device("meta"):
        model = UNetMotionModel.from_unet2d(_MetaConfig(unet), motion_adapter, load_weights=False)
    weight = unet.conv_in.weight
    state = dict(unet.state_dict(keep_vars=True))  # the Parameter objects themselves: moved / cast together
    for key, value in motion_adapter.state_dict(keep_vars=True).items():
        if value.device != weight.device or value.dtype != weight.dtype:
            value = value.detach().to(device=weight.device, dtype=weight.dtype)
        state[key] = value
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError("AnimateDiff UNet: the UNet and the motion adapter do not fill the motion UNet; missing "
                           f"{sorted(result.missing_keys)[:8]} (of {len(result.missing_keys)}), unexpected "
                           f"{sorted(result.unexpected_keys)[:8]} (of {len(result.unexpected_keys)})")
    unfilled = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unfilled:  # a tensor outside the state dict (non-persistent buffer) that this diffusers version added
        raise RuntimeError(f"AnimateDiff UNet: {unfilled[:8]} are not in the UNet's or the adapter's state dict")
    return model.eval()


class _MetaConfig:
    """What ``UNetMotionModel.from_unet2d(..., load_weights=False)`` reads of a UNet: its config and device (it moves
    the adapter there, so the real device is given, not the meta context's)."""

    def __init__(self, unet: nn.Module):
        self.config = unet.config
        self.device = unet.conv_in.weight.device


def _frames_kw(block: nn.Module, num_frames: int) -> dict:
    """AnimateDiff blocks (``motion_modules`` inside) take the clip length; plain blocks take nothing."""
    return {"num_frames": num_frames} if hasattr(block, "motion_modules") else {}


# ---- the denoiser ------------------------------------------------------------------------------------------------


class SKDenoiser(nn.Module):
    """SD1.5 UNet (or its AnimateDiff ``UNetMotionModel``) + optional reference adapter + optional HelloMeme motion
    adapter (``motion_down`` / ``motion_up``), injected as ``scheme`` says (default: v3+).

    ``forward(sample (B,4,F,h,w), timestep, text (B,T,D) | (B,F,T,D), reference_cache, control, motion_pads,
    use_motion) -> (noise_pred (B,4,F,h,w), cache {key: (B·F, C, h_i, w_i)})``, cache keys as the scheme's.
    """

    def __init__(self, unet: nn.Module, reference: Optional[nn.Module] = None, motion: Optional[nn.Module] = None,
                 scheme: InjectionScheme = V3_SCHEME):
        super().__init__()
        self.unet = unet
        self.reference = reference
        self.motion = motion
        self.scheme = scheme
        self._points = _Points.of(unet, scheme)
        direct_attention(unet)  # plain attention computed directly (same values; no per-call processor inspection)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def cache_keys(self) -> tuple[str, ...]:
        """Keys of the cache this denoiser returns (its reference role's output), in call order."""
        p = self._points
        keys = [k for k in p.down_cache if k] + ([p.mid_cache] if p.mid_cache else []) + [k for k in p.up_cache if k]
        return tuple(keys)

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

    def _ref(self, reference_cache: Optional[FeatureDict], key: Optional[str]) -> Optional[torch.Tensor]:
        """The reference cache entry of a feature point, when this denoiser knits references and has it."""
        if key is None or reference_cache is None or self.reference is None:
            return None
        ref = reference_cache.get(key)
        return None if ref is None else ref.to(device=self.device, dtype=self.dtype)

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
        (B, F, T, D) per frame. reference_cache: the reference role's cache, {key: (B, C, h, w)} (or (B·F, ...)).
        control: {key: (B, C, F, h_i, w_i)} with the scheme's keys (v3+: ``down3_i``, ``up3_i``; v1/v2: ``down_i``,
        ``down2_i``, ``up_v2_i``, ``up2_v2_i``). motion_pads: {down_i, up_i: (B, C, 2, h_i, w_i)} or None.
        ``collect_cache`` returns the cache; ``cache_only`` stops once the cache is complete (the reference role) and
        returns ``(None, cache)``. ``deep`` (opt-in feature reuse, DeepCache-style): a full call stores the input of
        the last up block in it; a call with ``deep.reuse`` set runs only ``conv_in``, down block 0 (its skips) and
        the last up block, on the stored feature. Never used by the reference role.
        """
        unet, points = self.unet, self._points
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

        def with_control(h: torch.Tensor, keys: tuple[str, ...]) -> torch.Tensor:
            for key in keys:
                c = control.get(key)
                if c is not None:
                    h = h + self._frames(c)
            return h

        def pad(key: str) -> Optional[torch.Tensor]:
            if motion_pads is None:
                return None
            return motion_pads[key].to(device=device, dtype=dtype)

        cache: dict[str, torch.Tensor] = {}
        ctx = _Call(emb, text, num_frames, with_control, pad, reference_cache, use_motion)

        # 2. down path: (B·F, C, h, w)
        h = unet.conv_in(frames_to_batch(sample))
        skips: tuple[torch.Tensor, ...] = (h,)
        if deep is not None and deep.reuse:
            return self._shallow(h, ctx, deep), cache
        knit_down = self.scheme.cross_attention_points and hasattr(self.reference, "reference_modules_down")
        for i, block in enumerate(unet.down_blocks):
            h, res = self._down(block, h, emb, text, num_frames)
            key = points.down_cache[i]
            if collect_cache and key is not None:
                cache[key] = h.clone()
            c = with_control(h, points.down_control[i])
            if c is not h:
                # The block output is also its last skip tensor: the control enters both (the original's in-place
                # add on the shared tensor).
                h = c
                res = tuple(res[:-1]) + (h,)
            ref = self._ref(reference_cache, key) if knit_down else None
            if ref is not None:
                h = self.reference.reference_modules_down[i](h, ref, num_frames)
            if use_motion:
                h = self.motion.motion_down[i](h, pad(f"down_{i}"), emb, num_frames)
            skips += tuple(res)

        # 3. mid (v1/v2: reference knitting after it, then its cache entry)
        if unet.mid_block is not None:
            mid = unet.mid_block
            if getattr(mid, "has_cross_attention", False):
                h = mid(h, emb, encoder_hidden_states=text, **_frames_kw(mid, num_frames))
            else:
                h = mid(h, emb, **_frames_kw(mid, num_frames))
            if points.mid_cache is not None:
                ref = self._ref(reference_cache, points.mid_cache)
                if ref is not None and hasattr(self.reference, "reference_modules_mid"):
                    h = self.reference.reference_modules_mid(h, ref, num_frames)
                if collect_cache:
                    cache[points.mid_cache] = h.clone()

        # 4. up path; the upsample size is forwarded when the latent is not a multiple of the total down factor
        forward_upsample_size = any(s % (2 ** unet.num_upsamplers) != 0 for s in (height, width))
        last = len(unet.up_blocks) - 1
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[2:] if (i < last and forward_upsample_size) else None
            key = points.up_cache[i]
            if collect_cache and key is not None:
                cache[key] = h.clone()
            if cache_only and i == last:
                return None, cache
            if deep is not None and i == last:
                deep.store(h)
            h = self._up(i, h, res, upsample_size, ctx)
        return self._out(h, num_frames), cache

    @staticmethod
    def _down(block, h, emb, text, num_frames):
        """A down block (text for its cross-attention where it has one; the clip length for AnimateDiff blocks)
        -> (output, skip tensors)."""
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=emb, encoder_hidden_states=text, **_frames_kw(block, num_frames))
        return block(hidden_states=h, temb=emb, **_frames_kw(block, num_frames))

    def _up(self, i, h, res, upsample_size, ctx: "_Call"):
        """Up block ``i`` with what enters before it: control, reference knitting, motion."""
        points = self._points
        h = ctx.with_control(h, points.up_control[i])
        ref = self._ref(ctx.reference_cache, points.up_cache[i])
        if ref is not None:
            first = getattr(self.reference, "first_up_block", None)
            j = points.up_ordinal[i] if first is None else i - first
            h = self.reference.reference_modules_up[j](h, ref, ctx.num_frames)
        if ctx.use_motion:
            h = self.motion.motion_up[i](h, ctx.pad(f"up_{i}"), ctx.emb, ctx.num_frames)
        block = self.unet.up_blocks[i]
        kw = _frames_kw(block, ctx.num_frames)
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=ctx.emb, res_hidden_states_tuple=res, encoder_hidden_states=ctx.text,
                         upsample_size=upsample_size, **kw)
        return block(hidden_states=h, temb=ctx.emb, res_hidden_states_tuple=res, upsample_size=upsample_size, **kw)

    def _out(self, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B·F, C, h, w) -> noise prediction (B, 4, F, h, w)."""
        unet = self.unet
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return batch_to_frames(unet.conv_out(h), num_frames)

    def _shallow(self, h, ctx: "_Call", deep: "DeepFeature"):
        """A reuse call: down block 0 gives the last up block's skips (``conv_in`` and its resnets' outputs, which the
        control does not touch); the deeper blocks are replaced by the stored input of the last up block."""
        unet = self.unet
        _, res = self._down(unet.down_blocks[0], h, ctx.emb, ctx.text, ctx.num_frames)
        last = len(unet.up_blocks) - 1
        n = len(unet.up_blocks[last].resnets)
        skips = ((h,) + tuple(res))[:n]
        deep_h = deep.load(device=self.device, dtype=self.dtype)
        h = self._up(last, deep_h, skips, None, ctx)
        return self._out(h, ctx.num_frames)

    @torch.no_grad()
    def reference_features(self, latent: torch.Tensor, text: torch.Tensor,
                           control: Optional[FeatureDict] = None) -> dict[str, torch.Tensor]:
        """The reference role: cache of ``latent`` (B, 4, h, w) at t = 0 (F = 1) with ``text`` (B, T, D) and
        optional reference-side control ({key: (B, C, 1, h_i, w_i)}); returns {key: (B, C, h_i, w_i)} with the
        scheme's keys (:attr:`cache_keys`). Stops before the last up block (its output is not needed)."""
        _, cache = self(latent[:, :, None], 0, text, control=control, collect_cache=True, cache_only=True)
        return cache


@dataclass
class _Call:
    """What every block of one denoiser call shares."""

    emb: torch.Tensor  # (B·F, E)
    text: torch.Tensor  # (B·F, T, D)
    num_frames: int
    with_control: Callable[[torch.Tensor, tuple[str, ...]], torch.Tensor]  # h + the control of those keys
    pad: Callable[[str], Optional[torch.Tensor]]  # key -> (B, C, 2, h, w) or None
    reference_cache: Optional[FeatureDict]
    use_motion: bool


def build_denoiser(version: str, unet: nn.Module, reference: Optional[nn.Module] = None,
                   motion: Optional[nn.Module] = None, animatediff: Optional[nn.Module] = None) -> SKDenoiser:
    """The denoiser of HelloMeme ``version`` from loaded parts: the SD1.5 ``unet``, the reference adapter, the
    HelloMeme motion adapter (v3+ video: ``HM3MotionAdapter`` / ``HM5MotionAdapter``) and, for v1-v4 video, the
    AnimateDiff ``MotionAdapter`` (``hm*_animatediff*``), whose temporal modules go inside the UNet's blocks (the UNet's
    tensors are shared, not copied; see :func:`animatediff_unet`). The reference UNet of any version is
    ``build_denoiser(version, sd15_unet)`` (no adapters)."""
    if animatediff is not None:
        unet = animatediff_unet(unet, animatediff)
    return SKDenoiser(unet, reference=reference, motion=motion, scheme=scheme_for(version))
