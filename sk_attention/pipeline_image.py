"""HelloMeme image pipeline (every version, v1 to v5c), the version table, and the pieces the video pipelines share.

One generated image = the reference image re-posed and re-expressed by one driving frame:

1. reference latent = a SAMPLE of the encoding VAE's posterior (its noise drawn from the run's noise source) x the
   VAE scaling factor (0.18215);
2. reference cache: the reference UNet (plain SD1.5 weights) at t = 0 on that latent (F = 1) with the reference text;
   v5c also feeds it control features of the reference image's own pose / expression;
3. control features of the driving frame (``down3_i`` / ``up3_i``) from the control encoder + projector, or given;
4. ``steps`` steps of the version's sampler (a fresh scheduler; DPM++ SDE for v3+, Euler for v1/v2) of the SK
   denoiser, CFG with the official single negative branch:
   negative text, the cache of an all-zero reference latent, control of an all -1 pose image with zero expression
   (v5c: the reference-side control negative by the same rule); batches ``[uncond, cond]``,
   ``eps = eps_u + s (eps_c - eps_u)``, only when ``s > 1``;
5. decode with the decoding VAE: image (B, H, W, 3) in [0, 1] and latents (B, 4, h, w) / scaling factor.

Text embeddings are inputs (``prompt_embeds`` (B, T, D)); in the released "stylize x1" mode the reference pass uses
the official SD1.5 text encoder (``reference_prompt_embeds``), which defaults to the denoising embeddings. Either side
may also be :class:`PromptEntries`, several weighted entries (ComfyUI's combined conditioning): every entry is a
prediction row of its own (its reference cache included) and the rows are averaged by weight before CFG
(:class:`TextRows`); one entry per side is exactly the released ``[uncond, cond]`` batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..runtime.base import ModelHandle, Runtime
from ..runtime.speed import SpeedOptions, accelerated, reuse_interval
from .conditioning import BUILTIN_PROMPT, BUILTIN_PROMPT_NEW, builtin_prompt  # noqa: F401 (re-exported)
from .denoiser import DeepFeature, SKDenoiser
from .schedulers import NoiseSource, as_noise_source, make_scheduler, scheduler_step, set_steps



@dataclass(frozen=True)
class VersionSpec:
    """What a HelloMeme version changes in the pipelines (the modules themselves come with the loaded files).

    image_scheduler / video_scheduler: the released sampler ("euler": v1/v2, v3/v4 video; "dpmpp_sde": v3/v4
    image, all v5). video: "windows" (v1/v2: per-frame pre-pass, then fixed 12-frame windows with overlap),
    "keyframes" (v3-v5b: hierarchical keyframe windows), None (image only). pre_pass: the video pipeline first
    generates frames without motion with ``unet_pre`` (v1-v4). keep_first_pads: a keyframe's pad keeps the first
    cache computed for it (v3/v4; v5 overwrites it with the shallower pass's). reference_points: which reference
    cache entries the denoiser reads ("up": up path only, v2+; "all": down, mid and up, v1).
    """

    name: str
    image_scheduler: str
    video_scheduler: Optional[str]
    video: Optional[str]
    pre_pass: bool = False
    keep_first_pads: bool = False
    reference_points: str = "up"


VERSION_SPECS: dict[str, VersionSpec] = {
    "v1": VersionSpec("v1", "euler", "euler", "windows", pre_pass=True, reference_points="all"),
    "v2": VersionSpec("v2", "euler", "euler", "windows", pre_pass=True),
    "v3": VersionSpec("v3", "dpmpp_sde", "euler", "keyframes", pre_pass=True, keep_first_pads=True),
    "v4": VersionSpec("v4", "dpmpp_sde", "euler", "keyframes", pre_pass=True, keep_first_pads=True),
    "v5": VersionSpec("v5", "dpmpp_sde", "dpmpp_sde", "keyframes"),
    "v5b": VersionSpec("v5b", "dpmpp_sde", "dpmpp_sde", "keyframes"),
    "v5c": VersionSpec("v5c", "dpmpp_sde", None, None),
}
VERSIONS = tuple(VERSION_SPECS)
VIDEO_VERSIONS = tuple(v for v, spec in VERSION_SPECS.items() if spec.video is not None)
# v1/v2: the CFG negative of the PD-FGC expression is the encoder's code of an all -1 face (``neg_pd_fpg``), v3+ zeros
ENCODER_NEGATIVE_VERSIONS = ("v1", "v2")


def version_spec(version: str) -> VersionSpec:
    if version not in VERSION_SPECS:
        raise ValueError(f"unknown HelloMeme version {version!r}: use one of {', '.join(VERSIONS)}")
    return VERSION_SPECS[version]
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 1.5
# Per-frame control features ({down3_i, up3_i}) of a 512x512 frame: 5.0 M values = 9.5 MiB in fp16 (19 MiB fp32).
# They depend only on the driving frame (pose image + expression), never on the timestep or the latents, so a video
# computes them once per frame and reuses them in every step and overlapping window. 2 GiB on the host keeps ~215
# frames at 512x512 fp16 (~107 fp32); frames beyond it are recomputed per window and step (as with a budget of 0).
DEFAULT_CONTROL_CACHE_BYTES = 2 << 30
FeatureDict = dict[str, torch.Tensor]
Observer = Callable[[str, dict], None]


# ---- models -------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class HelloMemeModels:
    """The modules of a v5-family pipeline.

    denoiser: SD1.5 UNet of the user's checkpoint + reference adapter (+ motion adapter for video).
    reference_unet: SD1.5 UNet without adapters (official SD1.5 weights in the released "stylize x1" mode).
    encode_vae / decode_vae: the reference-encoding VAE (official SD1.5 in x1) and the decoding VAE (checkpoint's).
    control_encoder / control_projector: ``HM5ControlNetBase`` / ``HM5SD15ControlProj`` (v5c: ``hm5c_control_proj``);
    optional when control features are given.
    """

    version: str
    denoiser: SKDenoiser
    reference_unet: SKDenoiser
    encode_vae: nn.Module
    decode_vae: nn.Module
    control_encoder: Optional[nn.Module] = None
    control_projector: Optional[nn.Module] = None
    pre_denoiser: Optional[SKDenoiser] = None  # unet_pre (v1-v4 video): image UNet + reference adapter, no motion
    arkit_control_encoder: Optional[nn.Module] = None  # v1/v2: the separate ARKit + face-parts net (hm_control)
    dtype: Optional[torch.dtype] = None  # None: the runtime's choice per role
    lora_report: Optional[list] = None  # lines saying what a LoRA merge applied and what it could not
    _handles: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        version_spec(self.version)

    @property
    def spec(self) -> VersionSpec:
        return version_spec(self.version)

    def handles(self, runtime: Runtime) -> dict[str, ModelHandle]:
        """Runtime handles of every module (registered once per runtime kind and device).

        Roles backed by the same weights (the reference UNet and the denoiser's UNet, or one VAE for encoding and
        decoding, when the official SD1.5 is also the denoising checkpoint) share one managed model: the weights are
        held and moved once."""
        key = (runtime.name, str(runtime.device))
        if key not in self._handles:
            # larger roles first, so a role whose weights are all part of an earlier one (the reference UNet inside
            # unet_pre or the denoiser) shares that one's managed model
            roles = {"denoiser": "diffusion", "pre_denoiser": "diffusion", "reference_unet": "diffusion",
                     "encode_vae": "vae", "decode_vae": "vae", "control_encoder": "diffusion",
                     "control_projector": "diffusion", "arkit_control_encoder": "diffusion"}
            out: dict[str, ModelHandle] = {}
            managed: list[tuple[set, ModelHandle]] = []
            for name, role in roles.items():
                module = getattr(self, name)
                if module is None:
                    continue
                params = {id(p) for p in module.parameters()} or {id(module)}
                owner = next((h for ids, h in managed if params <= ids), None)
                if owner is not None:  # same weights as (part of) an already managed module
                    out[name] = ModelHandle(name=f"hellomeme.{self.version}.{name}", module=module,
                                            dtype=owner.dtype, extra=owner.extra)
                    continue
                out[name] = runtime.manage(f"hellomeme.{self.version}.{name}", module, runtime.dtype(self.dtype, role))
                managed.append((params, out[name]))
            self._handles[key] = out
        return self._handles[key]

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.encode_vae.config, "scaling_factor", 0.18215) or 0.18215)


def load_models(version: str, checkpoint: str | Path, sd15: str | Path | None, reference: str | Path,
                motion: str | Path | None = None, control_encoder: str | Path | None = None,
                control_projector: str | Path | None = None, vae: str | Path | None = None,
                lora: str | Path | None = None, lora_scale: float = 1.0, stylize: str = "x1",
                dtype: Optional[torch.dtype] = None, animatediff: str | Path | None = None,
                arkit_control_encoder: str | Path | None = None, video: Optional[bool] = None) -> HelloMemeModels:
    """Load a HelloMeme pipeline's modules from files (strict loads, no ``from_pretrained``).

    checkpoint: the user's SD1.5 checkpoint (single file or diffusers folder): denoising UNet and decoding VAE.
    sd15: the official SD1.5 (diffusers folder with ``unet/`` and ``vae/``, or a single file): the reference UNet
    and the encoding VAE in ``stylize="x1"`` (as released); ``"x2"`` takes both from ``checkpoint`` instead (and the
    LoRA is merged into the reference UNet too). reference / motion / animatediff / control_*: released HelloMeme
    folders of the version (e.g. v5: ``hm5_reference``, ``hm5_motion``, ``hm5_control_base``, ``hm5_control_proj``;
    v1: ``hm_reference``, ``hm_animatediff_frame12``, ``hm_control2`` as ``control_encoder`` and ``hm_control`` as
    ``arkit_control_encoder``). ``video`` (default: a motion or AnimateDiff adapter is given) also builds the v1-v4
    pre-pass UNet ``unet_pre``: the official SD1.5 UNet in x1 (the checkpoint's in x2) with the reference adapter,
    and the LoRA merged into it as released.
    vae: optional VAE file or folder replacing the decoding VAE. lora: an SD1.5 LoRA merged as released: into the
    denoising UNet (and in "x2" the reference UNet) at weight 1.0, whatever ``lora_scale`` is; ``lora_scale`` is
    the released text-encoder LoRA strength, but the prompts come as embeddings from the user's CLIP, so the
    text-encoder part is not applied here and ``lora_report`` says so (load it on the CLIP at ``lora_scale``).
    """
    import copy

    from .adapters import load_animatediff_adapter, load_hellomeme_module
    from .base_models import load_sd15, load_vae_file, merge_lora
    from .denoiser import build_denoiser

    spec = version_spec(version)
    if stylize not in ("x1", "x2"):
        raise ValueError(f"stylize must be 'x1' or 'x2', got {stylize!r}")
    video = (motion is not None or animatediff is not None) if video is None else video
    if video and spec.video is None:
        raise ValueError(f"HelloMeme {version} is an image-only version")
    user = load_sd15(checkpoint, parts=("unet", "vae"), dtype=dtype)
    if stylize == "x1":
        if sd15 is None:
            raise ValueError("stylize 'x1' needs the official SD1.5 weights (sd15) for the reference UNet and encoder")
        if Path(sd15).resolve() == Path(checkpoint).resolve() and lora is None:
            ref_unet, enc_vae = user.unet, user.vae  # the same files: load (and hold) them once
        else:
            official = load_sd15(sd15, parts=("unet", "vae"), dtype=dtype)
            ref_unet, enc_vae = official.unet, official.vae
    else:
        ref_unet, enc_vae = copy.deepcopy(user.unet), copy.deepcopy(user.vae)
    pre_unet = None
    if video and spec.pre_pass:  # unet_pre: official SD1.5 (x1) or the checkpoint (x2), plus the LoRA
        pre_unet = user.unet if stylize == "x2" else (ref_unet if lora is None else copy.deepcopy(ref_unet))
    lora_report = None
    if lora is not None:
        report = merge_lora(user.unet, lora, scale=1.0, text_encoder_scale=lora_scale)
        lora_report = [f"LoRA {Path(str(lora)).name}: the denoising UNet at 1.0 (as released)"] + report.lines()
        if pre_unet is not None and pre_unet is not user.unet:
            pre_report = merge_lora(pre_unet, lora, scale=1.0, text_encoder_scale=lora_scale)
            lora_report.append(f"LoRA: merged {len(pre_report.applied)} pre-pass UNet layer(s) at 1.0")
        if stylize == "x2":
            ref_report = merge_lora(ref_unet, lora, scale=1.0, text_encoder_scale=lora_scale)
            lora_report.append(f"LoRA (x2): merged {len(ref_report.applied)} reference-UNet layer(s) at 1.0")
    dec_vae = load_vae_file(vae, dtype=dtype) if vae is not None else user.vae
    load = (lambda folder: None if folder is None else load_hellomeme_module(folder, dtype=dtype))
    ref_adapter = load(reference)
    return HelloMemeModels(
        version=version,
        denoiser=build_denoiser(version, user.unet, ref_adapter, load(motion) if video else None,
                                load_animatediff_adapter(animatediff, dtype=dtype)
                                if video and animatediff is not None else None).eval(),
        reference_unet=build_denoiser(version, ref_unet).eval(),
        encode_vae=enc_vae, decode_vae=dec_vae,
        control_encoder=load(control_encoder), control_projector=load(control_projector),
        pre_denoiser=build_denoiser(version, pre_unet, ref_adapter).eval() if pre_unet is not None else None,
        arkit_control_encoder=load(arkit_control_encoder), dtype=dtype, lora_report=lora_report)


# ---- control features ---------------------------------------------------------------------------------------------
class ControlSource:
    """Control features ``{down3_i, up3_i: (B, C, f, h_i, w_i)}`` of the frames of a driving clip.

    ``features(frames)`` gives the conditional features of those frames; ``negative()`` the CFG negative (an all -1
    pose image with zero expression), (B, C, 1, h_i, w_i), reused for every frame. ``modules`` are the networks the
    source runs (the pipeline makes them resident while it asks for features).
    """

    num_frames: int = 1
    modules: tuple[str, ...] = ()

    def features(self, frames: Sequence[int], device: torch.device, dtype: torch.dtype) -> FeatureDict:
        raise NotImplementedError

    def negative(self, device: torch.device, dtype: torch.dtype) -> FeatureDict:
        raise NotImplementedError

    def cfg_features(self, frames: Sequence[int], device, dtype, guided: bool) -> FeatureDict:
        """``[negative (repeated over frames), conditional]`` on the batch axis when ``guided``, else conditional."""
        cond = self.features(frames, device, dtype)
        if not guided:
            return cond
        neg = self.negative(device, dtype)
        return {k: torch.cat([neg[k].expand(-1, -1, v.shape[2], -1, -1), v], dim=0) for k, v in cond.items()}


class PrecomputedControls(ControlSource):
    """Given features: ``features`` {key: (B, C, F, h, w)} and ``negative`` {key: (B, C, 1, h, w)} (needed for CFG).
    Tensors stay where they are (keep them on the CPU for long clips); windows are moved to the device on demand."""

    def __init__(self, features: Mapping[str, torch.Tensor], negative: Optional[Mapping[str, torch.Tensor]] = None):
        self._features = dict(features)
        self._negative = None if negative is None else dict(negative)
        self.num_frames = next(iter(self._features.values())).shape[2]

    @classmethod
    def from_cfg_batch(cls, features: Mapping[str, torch.Tensor]) -> "PrecomputedControls":
        """From features already batched ``[uncond, cond]`` (2B, C, 1, h, w), as the original computes them."""
        half = {k: v.shape[0] // 2 for k, v in features.items()}
        return cls({k: v[half[k]:] for k, v in features.items()}, {k: v[:half[k]] for k, v in features.items()})

    def features(self, frames, device, dtype):
        idx = torch.as_tensor(list(frames), dtype=torch.long)
        return {k: v.index_select(2, idx.to(v.device)).to(device=device, dtype=dtype)
                for k, v in self._features.items()}

    def negative(self, device, dtype):
        if self._negative is None:
            raise ValueError("classifier-free guidance needs the negative control features (all -1 pose, zero "
                             "expression); pass `negative` or use guidance_scale <= 1")
        return {k: v.to(device=device, dtype=dtype) for k, v in self._negative.items()}


class _BoundedStore:
    """Per-key tensor dicts kept while they fit in ``max_bytes`` (fill-until-full: no eviction, so a sequential sweep
    over more frames than fit still hits on the cached ones). Tracks current and peak bytes."""

    def __init__(self, max_bytes: int, device: torch.device | str = "cpu"):
        self.max_bytes = int(max_bytes)
        self.device = torch.device(device)
        self.items: dict = {}
        self.bytes = 0
        self.peak_bytes = 0

    @staticmethod
    def size(d: Mapping[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in d.values())

    def get(self, key):
        return self.items.get(key)

    def put(self, key, value: Mapping[str, torch.Tensor]) -> bool:
        self.discard(key)
        n = self.size(value)
        if self.bytes + n > self.max_bytes:
            return False
        # an own contiguous copy: a frame slice of a window's tensor must not keep the whole window alive
        self.items[key] = {k: torch.empty(v.shape, dtype=v.dtype, device=self.device).copy_(v)
                           for k, v in value.items()}
        self.bytes += n
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def discard(self, key) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= self.size(old)

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0


class ComputedControls(ControlSource):
    """Control features computed by the version's control networks from the driving parameters.

    encoder / projector: the control net and (v4/v5) its projector (None: the encoder's output is the features).
    arkit_encoder (v1/v2): the separate ARKit + face-parts net; there ``encoder`` is the PD-FGC net, and each runs
    when its expression is given (both when both are, their features side by side, as released).
    condition: pose images (B, 3, F, H, W) in [-1, 1], or a callable ``frames -> (B, 3, f, H, W)`` (so a long clip's
    pose images need not be held at once). Expression: ``emo_embedding`` (B, F, 548) (PD-FGC) and/or
    ``drive_coeff`` (B, F, 51) + ``face_parts`` (B, F, 3, 1024) (ARKit + CLIP face parts); one net with both
    branches (v3-v5) uses ARKit when given. CFG negative: an all -1 pose image with zero expression, except
    ``negative_emo_embedding`` (B, 1, 548) (v1/v2: the encoder's code of an all -1 face) for PD-FGC.

    The features depend only on the driving frames (never on the timestep or the latents): they are computed per
    window for the frames not yet stored, and up to ``cache_bytes`` of per-frame features are kept on
    ``cache_device`` (fill until full, no eviction) for every later step and overlapping window; frames beyond the
    budget are recomputed each time they are asked for (0: always recompute). Memory stays within the budget
    whatever the clip length (default :data:`DEFAULT_CONTROL_CACHE_BYTES`).
    """

    modules = ("control_encoder", "control_projector", "arkit_control_encoder")

    def __init__(self, encoder: Optional[nn.Module], projector: Optional[nn.Module],
                 condition: torch.Tensor | Callable[[Sequence[int]], torch.Tensor],
                 emo_embedding: Optional[torch.Tensor] = None, drive_coeff: Optional[torch.Tensor] = None,
                 face_parts: Optional[torch.Tensor] = None, num_frames: Optional[int] = None,
                 cache_bytes: int = DEFAULT_CONTROL_CACHE_BYTES, cache_device: torch.device | str = "cpu",
                 arkit_encoder: Optional[nn.Module] = None,
                 negative_emo_embedding: Optional[torch.Tensor] = None):
        if emo_embedding is None and drive_coeff is None:
            raise ValueError("give the expression: emo_embedding (B, F, 548) or drive_coeff (B, F, 51) + face_parts")
        if drive_coeff is not None and face_parts is None:
            raise ValueError("drive_coeff (ARKit) needs face_parts (B, F, 3, 1024)")
        self.encoder, self.projector, self.arkit_encoder = encoder, projector, arkit_encoder
        self.condition = condition
        self.expression: dict[str, torch.Tensor] = {}
        if drive_coeff is not None:
            self.expression.update(drive_coeff=drive_coeff, face_parts=face_parts)
        if emo_embedding is not None and (drive_coeff is None or arkit_encoder is not None):
            self.expression["emo_embedding"] = emo_embedding
        if "emo_embedding" in self.expression and encoder is None:
            raise ValueError("the PD-FGC expression needs its control network")
        if "drive_coeff" in self.expression and encoder is None and arkit_encoder is None:
            raise ValueError("the ARKit expression needs its control network")
        self.negative_emo_embedding = negative_emo_embedding
        exp = next(iter(self.expression.values()))
        self.num_frames = int(num_frames if num_frames is not None else
                              (condition.shape[2] if torch.is_tensor(condition) else exp.shape[1]))
        for v in self.expression.values():
            if v.shape[1] != self.num_frames:
                raise ValueError(f"expression has {v.shape[1]} frames, the clip {self.num_frames}")
        self.cache = _BoundedStore(cache_bytes, cache_device)
        self._negative: Optional[FeatureDict] = None

    def _condition(self, frames: Sequence[int]) -> torch.Tensor:
        if torch.is_tensor(self.condition):
            return self.condition[:, :, list(frames)]
        return self.condition(list(frames))

    @staticmethod
    def _apply(net: nn.Module, condition: torch.Tensor, expression: dict) -> FeatureDict:
        # computed where the network is (the pipeline makes it resident)
        param = next(net.parameters(), None)
        where, wdtype = (param.device, param.dtype) if param is not None else (condition.device, condition.dtype)
        exp = {k: v.to(device=where, dtype=wdtype) for k, v in expression.items()}
        return net(condition.to(device=where, dtype=wdtype), **exp)

    def _run(self, condition: torch.Tensor, expression: dict, device, dtype) -> FeatureDict:
        """Features of ``condition`` + ``expression``, returned on ``device`` in ``dtype``."""
        feats: dict[str, torch.Tensor] = {}
        if self.arkit_encoder is not None:
            # v1/v2: one net per expression kind, each with its own insertion keys
            if "drive_coeff" in expression:
                feats.update(self._apply(self.arkit_encoder, condition, {
                    k: expression[k] for k in ("drive_coeff", "face_parts")}))
            if "emo_embedding" in expression:
                feats.update(self._apply(self.encoder, condition, {"emo_embedding": expression["emo_embedding"]}))
        else:
            feats = dict(self._apply(self.encoder, condition, expression))
            if self.projector is not None:
                feats = self.projector(feats)
        return {k: v.to(device=device, dtype=dtype) for k, v in feats.items()}

    def features(self, frames, device, dtype):
        frames = list(frames)
        missing = [f for f in dict.fromkeys(frames) if self.cache.get(f) is None]
        fresh: dict[int, FeatureDict] = {}
        for f in missing:
            # one frame per call, as the original computes them: a frame's features do not depend on which window
            # (or how many missing frames) asked for it, so stored and recomputed features are identical
            exp = {k: v[:, f:f + 1] for k, v in self.expression.items()}
            fresh[f] = self._run(self._condition([f]), exp, device, dtype)
            self.cache.put(f, fresh[f])
        parts = [fresh[f] if f in fresh else self.cache.get(f) for f in frames]
        return {k: torch.cat([p[k].to(device=device, dtype=dtype) for p in parts], dim=2) for k in parts[0]}

    def negative(self, device, dtype):
        if self._negative is None:
            cond = self._condition([0])
            exp = {k: torch.zeros_like(v[:, :1]) for k, v in self.expression.items()}
            if "emo_embedding" in exp and self.negative_emo_embedding is not None:
                exp["emo_embedding"] = self.negative_emo_embedding.reshape(exp["emo_embedding"].shape[0], 1, -1)
            out = self._run(torch.full_like(cond, -1.0), exp, device, dtype)
            self._negative = {k: v.to(self.cache.device) for k, v in out.items()}
        return {k: v.to(device=device, dtype=dtype) for k, v in self._negative.items()}


def controls_from_drive_params(models: HelloMemeModels, params: Mapping[str, torch.Tensor],
                               cache_bytes: int = DEFAULT_CONTROL_CACHE_BYTES) -> ComputedControls:
    """Controls from the released drive-parameter dict: ``condition`` (B, 3, F, H, W) in [-1, 1] plus ``pd_fpg``
    (B, F, 548) (and for v1/v2 ``neg_pd_fpg`` (B, 1, 548), the CFG negative), and/or ``drive_coeff`` (B, F, 51) +
    ``face_parts`` (B, F, 3, 1024)."""
    if models.control_encoder is None and models.arkit_control_encoder is None:
        raise ValueError(f"computing control features needs HelloMeme {models.version}'s control network(s)")
    if "condition" not in params:
        raise ValueError("drive parameters need the pose images 'condition' (B, 3, F, H, W)")
    emo = params.get("pd_fpg", params.get("emo_embedding"))
    negative = None
    if models.version in ENCODER_NEGATIVE_VERSIONS and emo is not None:
        negative = params.get("neg_pd_fpg")
        if negative is None:
            raise ValueError(f"HelloMeme {models.version} needs 'neg_pd_fpg' (the PD-FGC code of an all -1 face) as "
                             "the negative of its expression")
    drive_coeff = params.get("drive_coeff")
    if drive_coeff is not None and models.version in ENCODER_NEGATIVE_VERSIONS and models.arkit_control_encoder is None:
        drive_coeff = None  # v1/v2 loaded without the ARKit net: PD-FGC only
        if emo is None:
            raise ValueError(f"HelloMeme {models.version} was loaded for the PD-FGC expression; the conditions carry "
                             "ARKit coefficients only")
    return ComputedControls(models.control_encoder, models.control_projector, params["condition"],
                            emo_embedding=emo, drive_coeff=drive_coeff,
                            face_parts=params.get("face_parts") if drive_coeff is not None else None,
                            cache_bytes=cache_bytes, arkit_encoder=models.arkit_control_encoder,
                            negative_emo_embedding=negative)


# ---- shared steps -------------------------------------------------------------------------------------------------
def image_to_vae_input(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) / (B, H, W, 3) RGB, uint8 or float in [0, 1] -> (B, 3, H, W) float32 in [-1, 1]."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"reference image must be (H, W, 3) or (B, H, W, 3) RGB, got {tuple(image.shape)}")
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return x.permute(0, 3, 1, 2) * 2.0 - 1.0


def vae_output_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) decoder output in [-1, 1] -> (B, H, W, 3) float32 in [0, 1] on the CPU."""
    return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def vae_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_reference(vae: nn.Module, image: torch.Tensor, noise: NoiseSource, device, dtype) -> torch.Tensor:
    """Reference latent (B, 4, h, w) = (posterior mean + std · noise) × scaling factor (a posterior SAMPLE)."""
    x = image_to_vae_input(image)
    f = vae_factor(vae)
    if x.shape[-1] % f or x.shape[-2] % f:
        raise ValueError(f"reference image size {tuple(x.shape[-2:])} must be a multiple of {f}")
    dist = vae.encode(x.to(device=device, dtype=dtype)).latent_dist
    eps = noise.draw(dist.mean.shape, "vae_posterior").to(device=device, dtype=dist.mean.dtype)
    latent = dist.mean + dist.std * eps
    sf = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
    return (latent * sf).float()


def decode_latents(vae: nn.Module, latents: torch.Tensor, scaling_factor: float, device, dtype) -> torch.Tensor:
    """(B, 4, h, w) latents (model scale) -> (B, H, W, 3) in [0, 1] on the CPU."""
    out = vae.decode((latents / scaling_factor).to(device=device, dtype=dtype), return_dict=False)[0]
    return vae_output_to_image(out)


def guided_text(prompt_embeds: torch.Tensor, negative: Optional[torch.Tensor], guided: bool,
                what: str = "prompt") -> torch.Tensor:
    """``[negative, prompt]`` on the batch axis when guided."""
    if not guided:
        return prompt_embeds
    if negative is None:
        raise ValueError(f"classifier-free guidance (guidance_scale > 1) needs negative {what} embeddings")
    return torch.cat([negative.to(prompt_embeds), prompt_embeds], dim=0)


# ---- text conditioning: weighted entries per CFG side ----------------------------------------------------------------
@dataclass
class PromptEntries:
    """One side of classifier-free guidance as weighted text embeddings ``embeds[i]`` (B or 1, T_i, D).

    ComfyUI's samplers evaluate every conditioning entry as its own prediction and average them weighted by the
    entry's strength, ``eps = sum_i w_i eps(text_i) / sum_i w_i``; the pipelines do the same (for HelloMeme an
    entry's prediction includes its own reference-UNet pass, which reads the text too). A single entry is exactly
    the plain pipeline (its weight cancels, as in ComfyUI).
    """

    embeds: list
    weights: list

    def __post_init__(self):
        if not self.embeds:
            raise ValueError("no text embeddings")
        if len(self.weights) != len(self.embeds):
            raise ValueError(f"{len(self.embeds)} text embeddings but {len(self.weights)} weights")
        if sum(float(w) for w in self.weights) <= 0:
            raise ValueError(f"the weights of the text embeddings sum to {sum(self.weights):g}; they must sum to > 0")

    @staticmethod
    def of(x) -> Optional["PromptEntries"]:
        if x is None or isinstance(x, PromptEntries):
            return x
        return PromptEntries([x], [1.0])


def _repeat_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    # (B, T, D) -> (B, length, D) by whole repeats: cross-attention over k copies of every key is the same attention
    return t if t.shape[1] == length else t.repeat(1, length // t.shape[1], 1)


@dataclass
class TextRows:
    """The text of every prediction row: ``text`` (R·B, L, D) = [negative entries..., positive entries...], each B
    rows, token lengths brought to their least common multiple by whole repeats (as ComfyUI batches conditionings of
    different lengths). ``negative`` rows come first (0 without guidance); ``weights`` has one value per row."""

    text: torch.Tensor
    negative: int
    weights: list
    batch: int

    @property
    def count(self) -> int:
        return len(self.weights)

    @property
    def plain(self) -> bool:
        """One entry per side with unit weight: the released batch ``[uncond, cond]`` (or ``cond``)."""
        return self.count == (2 if self.negative else 1) and all(float(w) == 1.0 for w in self.weights)

    def row(self, r: int) -> torch.Tensor:
        return self.text[r * self.batch:(r + 1) * self.batch]

    def positive_text(self) -> torch.Tensor:
        return self.text[self.negative * self.batch:]

    def expand_features(self, feats: Optional[FeatureDict], guided: bool) -> Optional[FeatureDict]:
        """Features batched ``[negative, conditional]`` (guided) or ``conditional`` -> one copy per row."""
        if feats is None or (self.count == (2 if guided else 1)):
            return feats
        out = {}
        for k, v in feats.items():
            neg, cond = v.chunk(2) if guided else (None, v)
            out[k] = torch.cat([neg] * self.negative + [cond] * (self.count - self.negative), dim=0)
        return out

    def combine(self, eps: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """(R·B, ...) predictions -> (B, ...): weighted mean per side, then CFG ``eps_u + s (eps_c - eps_u)``."""
        if self.plain:
            if not self.negative:
                return eps
            eps_u, eps_c = eps.chunk(2)
            return eps_u + guidance_scale * (eps_c - eps_u)
        per_row = eps.reshape(self.count, self.batch, *eps.shape[1:])
        w = torch.as_tensor([float(x) for x in self.weights], dtype=eps.dtype, device=eps.device)
        w = w.view(-1, *([1] * (per_row.ndim - 1)))

        def mean(rows: slice) -> torch.Tensor:
            return (per_row[rows] * w[rows]).sum(0) / w[rows].sum(0)

        eps_c = mean(slice(self.negative, None))
        if not self.negative:
            return eps_c
        eps_u = mean(slice(0, self.negative))
        return eps_u + guidance_scale * (eps_c - eps_u)


def text_rows(prompt, negative, guided: bool, batch: int, what: str = "prompt") -> TextRows:
    """:class:`TextRows` from the positive and negative text (tensors (B, T, D) or :class:`PromptEntries`)."""
    import math

    pos = PromptEntries.of(prompt)
    neg = PromptEntries.of(negative) if guided else None
    if guided and neg is None:
        raise ValueError(f"classifier-free guidance (guidance_scale > 1) needs negative {what} embeddings")
    entries = (list(zip(neg.embeds, neg.weights)) if neg is not None else []) + list(zip(pos.embeds, pos.weights))
    dims = {int(e.shape[-1]) for e, _ in entries}
    if len(dims) != 1:
        raise ValueError(f"the {what} embeddings have different widths {sorted(dims)}; use one text encoder")
    for e, _ in entries:
        if e.ndim != 3 or e.shape[0] not in (1, batch):
            raise ValueError(f"{what} embeddings must be (1 or {batch}, T, D), got {tuple(e.shape)}")
    length = 1
    for e, _ in entries:
        length = length * int(e.shape[1]) // math.gcd(length, int(e.shape[1]))
    ref = pos.embeds[0]
    if len(entries) == (2 if guided else 1) and all(e.shape[1] == length for e, _ in entries):
        full = (lambda e: e.expand(batch, -1, -1) if e.shape[0] != batch else e)  # noqa: E731
        text = guided_text(full(pos.embeds[0]), full(neg.embeds[0]) if neg is not None else None, guided, what)
    else:
        text = torch.cat([_repeat_tokens(e.to(ref), length).expand(batch, -1, -1) for e, _ in entries], dim=0)
    return TextRows(text=text, negative=len(neg.embeds) if neg is not None else 0,
                    weights=[float(w) for _, w in entries], batch=batch)


def reference_cache(reference_unet: SKDenoiser, latent: torch.Tensor, text: torch.Tensor, guided: bool,
                    control: Optional[FeatureDict] = None,
                    negative: Optional[FeatureDict] = None) -> FeatureDict:
    """Reference-UNet cache of ``latent`` (B, 4, h, w) at t = 0: {down_i, up_i: (B', C, h_i, w_i)}.

    With CFG (``text`` = [negative, prompt], ``control`` = [negative, conditional] on the batch axis) the cache is
    ``[cache of an all-zero latent, cache of latent]``. The two halves run as separate batches, so each is
    independent of the other's batching (the zero latent makes the first GroupNorms normalise almost constant
    maps, where batch-size dependent rounding would be amplified); ``negative`` reuses an already computed
    zero-latent half (it depends only on the negative text and control).
    """
    if not guided:
        return reference_unet.reference_features(latent, text, control=control)
    b = latent.shape[0]
    half = (lambda d, s: None if d is None else {k: v[s] for k, v in d.items()})
    if negative is None:
        negative = reference_unet.reference_features(torch.zeros_like(latent), text[:b],
                                                     control=half(control, slice(0, b)))
    positive = reference_unet.reference_features(latent, text[b:], control=half(control, slice(b, None)))
    return {k: torch.cat([negative[k].to(v), v], dim=0) for k, v in positive.items()}


def reference_cache_rows(reference_unet: SKDenoiser, latent: torch.Tensor, rows: TextRows,
                         control: Optional[FeatureDict] = None) -> FeatureDict:
    """:func:`reference_cache` for every text row: negative rows read an all-zero latent, positive rows ``latent``;
    each row runs as its own batch (so the released ``[uncond, cond]`` case is exactly :func:`reference_cache`).
    ``control`` is batched per row (:meth:`TextRows.expand_features`)."""
    if rows.count == 1:
        return reference_unet.reference_features(latent, rows.text, control=control)
    b = latent.shape[0]
    parts = []
    for r in range(rows.count):
        s = slice(r * b, (r + 1) * b)
        lat = torch.zeros_like(latent) if r < rows.negative else latent
        parts.append(reference_unet.reference_features(
            lat, rows.text[s], control=None if control is None else {k: v[s] for k, v in control.items()}))
    first = parts[-1]
    return {k: torch.cat([p[k].to(first[k]) for p in parts], dim=0) for k in first}


def denoiser_reference_cache(models: HelloMemeModels, cache: FeatureDict) -> FeatureDict:
    """The reference-cache entries the denoiser reads: the up path (v2+), everything (v1: down, mid and up); wrapped
    so that each knitting block computes its reference side once per run (:func:`.knitting.prepared_reference_cache`).
    """
    from .knitting import prepared_reference_cache

    if models.spec.reference_points != "all":
        cache = {k: v for k, v in cache.items() if k.startswith("up_")}
    pre = getattr(models, "pre_denoiser", None)
    return prepared_reference_cache(cache, models.denoiser.reference, None if pre is None else pre.reference)


def check_reference_geometry(models: HelloMemeModels, latent_hw: tuple[int, int], size_correct: bool) -> None:
    """The released v5 reference block only works on square latents (its column stage uses the row-length position
    table); ``size_correct`` lifts that by using the column length (identical on square maps)."""
    adapter = models.denoiser.reference
    if adapter is None or not hasattr(adapter, "use_row_length_column_positions"):
        return
    adapter.use_row_length_column_positions(not size_correct)
    h, w = latent_hw
    if h != w and not size_correct and getattr(getattr(adapter, "config", None), "variant", "v5") == "v5":
        raise ValueError(f"the released HelloMeme v5 reference block only works on square latents (got {h}x{w}); "
                         "enable the size-correct option (size_correct=True) for non-square images")


@dataclass
class ImageResult:
    image: torch.Tensor  # (B, H, W, 3) float in [0, 1], CPU
    latents: torch.Tensor  # (B, 4, h, w) final latents / VAE scaling factor (ComfyUI LATENT convention), CPU


# ---- the image pipeline ---------------------------------------------------------------------------------------------
def generate_image(
    models: HelloMemeModels,
    runtime: Runtime,
    reference_image: torch.Tensor,
    prompt_embeds: "torch.Tensor | PromptEntries",
    controls: ControlSource,
    negative_prompt_embeds: "Optional[torch.Tensor | PromptEntries]" = None,
    reference_prompt_embeds: Optional[torch.Tensor] = None,
    reference_negative_prompt_embeds: Optional[torch.Tensor] = None,
    reference_controls: Optional[ControlSource] = None,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    noise: NoiseSource | int | None = None,
    scheduler: Optional[str] = None,
    scheduler_config: Optional[dict] = None,
    frame: int = 0,
    size_correct: bool = False,
    observer: Optional[Observer] = None,
    speed: Optional[SpeedOptions] = None,
) -> ImageResult:
    """Generate one image: the reference re-posed by driving frame ``frame`` of ``controls``.

    reference_image: (H, W, 3) or (B, H, W, 3) RGB (uint8, or float in [0, 1]). prompt_embeds: (B, T, D) for the
    denoising UNet, or :class:`PromptEntries` (several weighted entries, ComfyUI's combined conditioning; the same
    for the negative); ``reference_prompt_embeds`` for the reference pass (default: the same). controls: the driving
    control source; ``reference_controls`` (v5c, required there): the reference image's own pose/expression.
    noise: a :class:`NoiseSource` or a seed. scheduler: "euler" / "dpmpp_sde" (None: the version's released one,
    Euler for v1/v2, DPM++ SDE for v3+). observer(event, data) receives ``reference_cache`` and ``step`` events.
    speed: opt-in accelerations of the denoiser (None: the exact path).
    """
    if models.version == "v5c" and reference_controls is None:
        raise ValueError("v5c needs reference_controls (the reference image's own pose and expression)")
    noise = as_noise_source(noise)
    guided = guidance_scale > 1.0
    handles = models.handles(runtime)
    device = runtime.device
    emit = observer or (lambda event, data: None)

    # 1. reference latent (B, 4, h, w)
    enc = handles["encode_vae"]
    runtime.load([enc])
    latent = encode_reference(enc.module, reference_image, noise, device, enc.dtype)
    runtime.offload([enc])
    b, _, h, w = latent.shape
    check_reference_geometry(models, (h, w), size_correct)
    base_noise = noise.draw((b, latent.shape[1], h, w), "latents")

    # 2. controls and reference cache
    den = handles["denoiser"]
    ref = handles["reference_unet"]
    ctrl_handles = [handles[m] for m in set(controls.modules) |
                    set(reference_controls.modules if reference_controls is not None else ()) if m in handles]
    runtime.load([ref, *ctrl_handles])
    rows = text_rows(prompt_embeds, negative_prompt_embeds, guided, b)
    ref_rows = rows if reference_prompt_embeds is None else text_rows(
        reference_prompt_embeds, reference_negative_prompt_embeds, guided, b, "reference prompt")
    if (ref_rows.count, ref_rows.negative) != (rows.count, rows.negative):
        raise ValueError("the reference prompt must have as many entries per side as the prompt")
    control = rows.expand_features(controls.cfg_features([frame], device, den.dtype, guided), guided)
    ref_control = None
    if reference_controls is not None and models.version == "v5c":
        ref_control = rows.expand_features(reference_controls.cfg_features([0], device, ref.dtype, guided), guided)
    text = rows.text
    cache = reference_cache_rows(ref.module, latent.to(device), TextRows(
        ref_rows.text.to(device), ref_rows.negative, ref_rows.weights, b), ref_control)
    emit("reference_cache", {"cache": cache})
    cache = denoiser_reference_cache(models, cache)
    runtime.offload([ref, *ctrl_handles])

    # 3. denoising
    sched = make_scheduler(scheduler or models.spec.image_scheduler, scheduler_config)
    timesteps = set_steps(sched, steps, device)
    latents = (base_noise * sched.init_noise_sigma).to(device)
    runtime.load([den])
    try:
        with runtime.progress(len(timesteps), desc="HelloMeme image") as progress, \
                accelerated(speed, [den.module]):
            interval = reuse_interval(speed, "HelloMeme")
            deep = DeepFeature(device) if interval > 1 else None  # feature reuse across steps (opt-in)
            for i, t in enumerate(timesteps):
                x = torch.cat([latents] * rows.count) if rows.count > 1 else latents
                x = sched.scale_model_input(x, t)
                if deep is not None:
                    deep.reuse = i % interval != 0
                eps = den.module(x[:, :, None], t, text, reference_cache=cache, control=control,
                                 collect_cache=False, deep=deep)[0][:, :, 0].float()
                eps = rows.combine(eps, guidance_scale)
                latents = scheduler_step(sched, eps, t, latents, noise)
                emit("step", {"step": i, "timestep": t, "noise_pred": eps, "latents": latents})
                progress.update()
    finally:
        runtime.offload([den])

    # 4. decode
    dec = handles["decode_vae"]
    runtime.load([dec])
    sf = models.scaling_factor
    image = decode_latents(dec.module, latents, sf, device, dec.dtype)
    runtime.offload([dec])
    return ImageResult(image=image, latents=(latents / sf).cpu())
