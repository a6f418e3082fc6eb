"""HelloMeme from the model store: which official files a version needs, where the SD1.5 base comes from, loading.

The denoising base is any SD1.5-derived checkpoint (a single file from ComfyUI's ``checkpoints`` folder or a diffusers
folder); the official SD1.5 weights serve the reference UNet and the encoding VAE in the default ``stylize="x1"``
mode, as released. They are taken from ``checkpoints/v1-5-pruned-emaonly.safetensors`` when present (the file most
ComfyUI users have), else from the diffusers folder ``portrait_animation/hellomeme/stable-diffusion-v1-5`` (what the
original downloads, and what ``download`` fetches).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..loaders.manifest import load_manifest
from ..loaders.store import MissingModelFiles, ModelStore, ProgressFn

IMAGE_VERSIONS = ("v5c", "v5b", "v5", "v4", "v3", "v2", "v1")
VIDEO_VERSIONS = ("v5", "v5b", "v4", "v3", "v2", "v1")
OFFICIAL = "official SD1.5"
EXPRESSIONS = ("pdfgc",)  # cntrl2 (PD-FGC), the released default; the ARKit + CLIP face-parts branch is not offered


@dataclass(frozen=True)
class VersionFiles:
    """Manifest file ids of a version's folders (each a ``config.json`` + weights folder)."""

    reference: str
    control: str  # the PD-FGC capable control net (v1/v2: hm*_control2; v3: the mixed net; v4/v5: the base)
    projector: str | None = None  # v4/v5: the control projector
    arkit_control: str | None = None  # v1/v2: the separate ARKit + face-parts net (only with expression "arkit")
    motion: str | None = None  # v3-v5 video: the HelloMeme motion adapter
    animatediff: str | None = None  # v1-v4 video: the AnimateDiff motion adapter


_PARTS = {
    "v1": VersionFiles("hm_reference", "hm_control2", arkit_control="hm_control", animatediff="hm_animatediff_frame12"),
    "v2": VersionFiles("hm2_reference", "hm2_control2", arkit_control="hm2_control",
                       animatediff="hm2_animatediff_frame12"),
    "v3": VersionFiles("hm3_reference", "hm3_control_mix", motion="hm3_motion", animatediff="hm3_animatediff"),
    "v4": VersionFiles("hm4_reference", "hm_control_base", "hm4_control_proj", motion="hm4_motion",
                       animatediff="hm4_animatediff"),
    "v5": VersionFiles("hm5_reference", "hm5_control_base", "hm5_control_proj", motion="hm5_motion"),
    "v5b": VersionFiles("hm5b_reference", "hm5_control_base", "hm5_control_proj", motion="hm5_motion"),
    "v5c": VersionFiles("hm5c_reference", "hm5_control_base", "hm5c_control_proj"),
}


def version_group(version: str, video: bool) -> str:
    if version not in IMAGE_VERSIONS:
        raise ValueError(f"unknown HelloMeme version {version!r}: use one of {', '.join(IMAGE_VERSIONS)}")
    if video and version not in VIDEO_VERSIONS:
        raise ValueError(f"HelloMeme {version} is an image-only version (video: {', '.join(VIDEO_VERSIONS)}); "
                         "choose another version for video, or use the image sampler")
    return f"{version}_video" if video else version


def version_files(version: str, video: bool, expression: str = "pdfgc") -> list[str]:
    """The manifest ids a version needs (weights and config.json of each folder), for image or video."""
    version_group(version, video)
    if expression not in EXPRESSIONS:
        raise ValueError(f"expression {expression!r} is not offered (use one of {', '.join(EXPRESSIONS)})")
    parts = _PARTS[version]
    ids = [parts.reference, parts.control, parts.projector]
    if video:
        ids += [parts.motion, parts.animatediff]
    ids = [i for i in ids if i is not None]
    return ids + [f"{i}_config" for i in ids]


def official_sd15(store: ModelStore, download: bool, progress: ProgressFn | None = None) -> Path:
    """The official SD1.5 weights: the single-file checkpoint if present, else the diffusers folder (downloaded)."""
    manifest = load_manifest("hellomeme")
    single = store.locate(manifest.file("sd15_checkpoint"))
    if single is not None:
        store.ensure([manifest.file("sd15_checkpoint")])
        return single
    parts = [f for f in manifest.select(groups=["base_diffusers"]) if "text_encoder" not in f.id]
    try:
        paths = store.ensure(parts, download=download, progress=progress)
    except MissingModelFiles as e:
        alt = store.destination(manifest.file("sd15_checkpoint"))
        raise MissingModelFiles(e.missing, reason="the official SD1.5 weights are needed (reference UNet, encoding "
                                "VAE)", hint=f"Turn on 'download', place these files, or put the single-file "
                                             f"checkpoint v1-5-pruned-emaonly.safetensors at {alt}.") from None
    return paths["sd15_diffusers_unet"].parent.parent


def load_hellomeme(version: str = "v5c", video: bool = False, checkpoint: str | Path | None = None,
                   stylize: str = "x1", lora: str | Path | None = None, lora_scale: float = 1.0,
                   vae: str | Path | None = None, store: ModelStore | None = None, dtype: torch.dtype | None = None,
                   download: bool = False, progress: ProgressFn | None = None):
    """A :class:`~.pipeline_image.HelloMemeModels` for ``version`` (image or video) from the store.

    ``checkpoint``: the denoising base (None: the official SD1.5). ``stylize``: "x1" (official SD1.5 for the
    reference path, as released) or "x2" (the checkpoint everywhere). Weights load strictly; dtype is cast at load.
    """
    from .pipeline_image import load_models

    store = store or ModelStore.default()
    manifest = load_manifest("hellomeme")
    ids = version_files(version, video)
    paths = store.ensure(manifest.select(ids=ids), download=download, progress=progress)
    sd15 = official_sd15(store, download, progress) if (stylize == "x1" or checkpoint is None) else None
    parts = _PARTS[version]
    folder = lambda file_id: None if file_id is None else paths[file_id].parent  # noqa: E731 (config.json + weights)
    return load_models(
        version=version, checkpoint=checkpoint or sd15, sd15=sd15 if stylize == "x1" else None,
        reference=folder(parts.reference), motion=folder(parts.motion) if video else None,
        animatediff=folder(parts.animatediff) if video else None,
        control_encoder=folder(parts.control), control_projector=folder(parts.projector),
        vae=vae, lora=lora, lora_scale=lora_scale, stylize=stylize, dtype=dtype, video=video)


def load_pdfgc_encoder(store: ModelStore | None = None, download: bool = False, device="auto"):
    """The PD-FGC expression encoder (``songkey/pd_fgc_motion``), loaded strictly, on ``device`` ("auto": the
    runtime's device, so it runs on ComfyUI's GPU; "cpu" keeps it on the host)."""
    from ..motion.hellomeme.pdfgc import load_fan_encoder

    store = store or ModelStore.default()
    paths = store.ensure(load_manifest("hellomeme").select(groups=["expression_pdfgc"]), download=download)
    return load_fan_encoder(paths["pd_fgc_motion"].parent, device=device)
