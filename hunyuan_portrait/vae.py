"""The SVD-xt temporal VAE as HunyuanPortrait uses it (diffusers ``AutoencoderKLTemporalDecoder``).

* loading: a diffusers folder (a root with ``vae/`` or the ``vae`` folder itself: ``config.json`` +
  ``diffusion_pytorch_model.fp16.safetensors`` or the fp32 ``diffusion_pytorch_model.safetensors``), or one weights
  file with an explicit or the embedded SVD-xt config, or the Stable Video Diffusion single file
  ``svd_xt.safetensors`` (its VAE tensors only, renamed by :mod:`.svd_vae_ldm`);
* :func:`encode_reference`: the encoder runs in float32 (``force_upcast``); ``ref_latents`` = mean x 0.18215 (the
  sampler's init), ``image_latents`` = the unscaled mode of ``image + noise_aug * noise`` (the concat conditioning);
* :func:`decode_latents`: ``latents / 0.18215`` decoded in independent chunks of ``chunk`` frames (the temporal layers
  never see across a chunk), raw decoder output; :func:`to_video` maps it to [0, 1].
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..loaders.checkpoint import embedded_config, load_with_policy, read_state_dict, strip_config
from ..loaders.policy import Conversion, LoadPolicy
from .svd_vae_ldm import convert_svd_vae, is_svd_checkpoint, read_svd_vae

VAE_POLICY = LoadPolicy("SVD-xt temporal VAE", unwrap=("state_dict",))
WEIGHT_NAMES = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
SCALING_FACTOR = 0.18215


def _vae_folder(path: Path) -> Path | None:
    for folder in (path, path / "vae"):
        if any((folder / n).is_file() for n in WEIGHT_NAMES):
            return folder
    return None


def load_vae(path: str | Path, config=None, dtype: torch.dtype | None = None):
    """An ``AutoencoderKLTemporalDecoder`` from a diffusers folder or a weights file. ``config``: a dict, a
    ``config.json`` path, or ``None`` (the folder's ``config.json``, else the embedded SVD-xt config)."""
    from diffusers import AutoencoderKLTemporalDecoder

    path = Path(path)
    if path.is_dir():
        folder = _vae_folder(path)
        if folder is None:
            raise FileNotFoundError(f"no SVD VAE weights in {path} (expected vae/{WEIGHT_NAMES[0]} or "
                                    f"{WEIGHT_NAMES[1]})")
        weights = next(folder / n for n in WEIGHT_NAMES if (folder / n).is_file())
        if config is None and (folder / "config.json").is_file():
            config = folder / "config.json"
    else:
        weights = path
    if config is None:
        config = embedded_config("svd_xt_vae")
    elif not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    cfg = strip_config(config)
    cfg.pop("_name_or_path", None)
    policy = VAE_POLICY
    if _is_svd_single_file(weights):
        sd = read_svd_vae(weights, dtype=dtype)                  # the VAE's tensors only, not the 9 GB UNet
        policy = VAE_POLICY.with_(conversions=(SVD_LDM_CONVERSION,))
    else:
        sd = read_state_dict(weights, dtype=dtype)          # cast as read
        if any(k.startswith(("first_stage_model.", "model.diffusion_model.")) for k in sd):
            raise ValueError(f"{weights} is an LDM checkpoint without the SVD temporal decoder (an image-only decoder "
                             "or another model); use svd_xt.safetensors or the diffusers SVD-xt VAE "
                             "(vae/diffusion_pytorch_model.fp16.safetensors)")
    vae = load_with_policy(lambda: AutoencoderKLTemporalDecoder.from_config(cfg), sd, policy, str(weights),
                           dtype=dtype)
    return vae.eval().requires_grad_(False)


def _is_svd_single_file(path: Path) -> bool:
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return is_svd_checkpoint(f.keys())
    except Exception:  # not readable as safetensors: read_state_dict names the problem
        return False


def _convert_svd(sd):
    converted = convert_svd_vae(sd)
    return converted, len(converted)


SVD_LDM_CONVERSION = Conversion("SVD single-file (sgm) VAE layout -> diffusers AutoencoderKLTemporalDecoder",
                                _convert_svd)


@contextmanager
def float32_encoder(vae) -> Iterator[None]:
    """Run the encoder (and ``quant_conv``) in float32, restoring their dtype afterwards."""
    parts = [vae.encoder, vae.quant_conv]
    dtypes = [next(p.parameters()).dtype for p in parts]
    try:
        for p in parts:
            p.to(torch.float32)
        yield
    finally:
        for p, dt in zip(parts, dtypes):
            p.to(dt)


@torch.no_grad()
def encode_reference(vae, image: torch.Tensor, noise_aug_strength: float = 0.0,
                     noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """image (B, 3, H, W) in [-1, 1] -> (ref_latents = mean x 0.18215, image_latents = mode of
    ``image + noise_aug_strength * noise``, unscaled), both (B, 4, H/8, W/8) float32."""
    device = next(vae.parameters()).device
    image = image.to(device=device, dtype=torch.float32)
    with float32_encoder(vae):
        ref = vae.encode(image).latent_dist.mean * SCALING_FACTOR
        if noise_aug_strength:
            if noise is None:
                noise = torch.randn_like(image)
            image = image + noise_aug_strength * noise.to(image)
        cond = vae.encode(image).latent_dist.mode()
    return ref, cond


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, chunk: int = 8, out_device: torch.device | str | None = None,
                   progress=None) -> torch.Tensor:
    """latents (B, F, 4, h, w) (scaled) -> frames (B, 3, F, H, W) float32, raw decoder output (about [-1, 1]).

    Frames are decoded in independent chunks of ``chunk`` (``num_frames`` = chunk length, the last may be shorter);
    each chunk moves to ``out_device`` (default: the latents' device) as it is done."""
    param = next(vae.parameters())
    b, f = latents.shape[:2]
    out_device = latents.device if out_device is None else torch.device(out_device)
    flat = latents.flatten(0, 1)
    scale = getattr(vae.config, "scaling_factor", SCALING_FACTOR)
    frames = torch.empty(0)
    for start in range(0, flat.shape[0], chunk):
        z = ((1 / scale) * flat[start:start + chunk]).to(device=param.device, dtype=param.dtype)
        decoded = vae.decode(z, num_frames=z.shape[0]).sample                     # (c, 3, H, W)
        if start == 0:  # one output buffer, filled chunk by chunk (no list + concatenation: one copy at the peak)
            frames = torch.empty((flat.shape[0], *decoded.shape[1:]), dtype=torch.float32, device=out_device)
        frames[start:start + z.shape[0]] = decoded.float().to(out_device)
        del decoded
        if progress is not None:
            progress(z.shape[0])
    return frames.reshape(b, f, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


def to_video(frames: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Raw decoder output -> [0, 1] (``x * 0.5 + 0.5`` clamped); ``inplace`` reuses ``frames``' memory."""
    if inplace:
        return frames.mul_(0.5).add_(0.5).clamp_(0, 1)
    return (frames * 0.5 + 0.5).clamp(0, 1)


__all__ = ["SCALING_FACTOR", "VAE_POLICY", "decode_latents", "encode_reference", "float32_encoder", "load_vae",
           "to_video"]
