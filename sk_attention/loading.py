"""HelloMeme from the model store: which official files a version needs, where the SD1.5 base comes from, loading.

The denoising base is any SD1.5-derived checkpoint (a single file from ComfyUI's ``checkpoints`` folder or a diffusers
folder); the official SD1.5 weights serve the reference UNet and the encoding VAE in the default ``stylize="x1"``
mode, as released. They are taken from ``checkpoints/v1-5-pruned-emaonly.safetensors`` when present (the file most
ComfyUI users have), else from the diffusers folder ``portrait_animation/hellomeme/stable-diffusion-v1-5`` (what the
original downloads, and what ``download`` fetches).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..loaders.manifest import load_manifest
from ..loaders.store import MissingModelFiles, ModelStore, ProgressFn

IMAGE_VERSIONS = ("v5c", "v5b", "v5")
VIDEO_VERSIONS = ("v5", "v5b")
OFFICIAL = "official SD1.5"

# version -> (reference adapter, control projector) folder ids in the manifest
_PARTS = {
    "v5": ("hm5_reference", "hm5_control_proj"),
    "v5b": ("hm5b_reference", "hm5_control_proj"),
    "v5c": ("hm5c_reference", "hm5c_control_proj"),
}


def version_group(version: str, video: bool) -> str:
    if video and version not in VIDEO_VERSIONS:
        raise ValueError(f"HelloMeme {version} has no video model (video: {', '.join(VIDEO_VERSIONS)}); "
                         "choose v5 or v5b for video, or use the image sampler")
    if version not in IMAGE_VERSIONS:
        raise ValueError(f"unknown HelloMeme version {version!r}: use one of {', '.join(IMAGE_VERSIONS)}")
    return f"{version}_video" if video else version


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
    group = version_group(version, video)
    paths = store.ensure(manifest.select(groups=[group]), download=download, progress=progress)
    sd15 = official_sd15(store, download, progress) if (stylize == "x1" or checkpoint is None) else None
    reference, projector = _PARTS[version]
    folder = lambda file_id: paths[file_id].parent  # noqa: E731 (a folder holding config.json + weights)
    return load_models(
        version=version, checkpoint=checkpoint or sd15, sd15=sd15 if stylize == "x1" else None,
        reference=folder(reference), motion=folder("hm5_motion") if video else None,
        control_encoder=folder("hm5_control_base"), control_projector=folder(projector),
        vae=vae, lora=lora, lora_scale=lora_scale, stylize=stylize, dtype=dtype)


def load_pdfgc_encoder(store: ModelStore | None = None, download: bool = False, device="auto"):
    """The PD-FGC expression encoder (``songkey/pd_fgc_motion``), loaded strictly, on ``device`` ("auto": the
    runtime's device, so it runs on ComfyUI's GPU; "cpu" keeps it on the host)."""
    from ..motion.hellomeme.pdfgc import load_fan_encoder

    store = store or ModelStore.default()
    paths = store.ensure(load_manifest("hellomeme").select(groups=["expression_pdfgc"]), download=download)
    return load_fan_encoder(paths["pd_fgc_motion"].parent, device=device)
