"""The SVD-xt VAE from a Stable Video Diffusion single-file checkpoint (``svd_xt.safetensors``, LDM/sgm layout).

Users of ComfyUI's own SVD workflows keep ``models/checkpoints/svd_xt.safetensors`` (9.56 GB), which holds the same
temporal VAE that HunyuanPortrait loads from the diffusers ``vae/`` folder, under other names:

* the decoder under ``first_stage_model.decoder.*`` (sgm ``VideoDecoder``: every resnet is a ``VideoResBlock`` with a
  3-D ``time_stack`` and a learned ``mix_factor``; ``conv_out`` carries a ``time_mix_conv``);
* the encoder and ``quant_conv`` of the image-conditioning embedder under ``conditioner.embedders.3.encoder.*`` (the
  VAE encoder the diffusers checkpoint was converted from), else ``first_stage_model.encoder.*``.

Only those tensors are read (memory-mapped), never the 9 GB UNet. :func:`convert_svd_vae` renames them to
``AutoencoderKLTemporalDecoder`` keys:

===========================================================  =====================================================
sgm / LDM                                                    diffusers
===========================================================  =====================================================
``{en,de}coder.{conv_in,conv_out}``, ``norm_out``            same, ``conv_norm_out``
``encoder.down.{i}.block.{j}.*``, ``downsample.conv``        ``encoder.down_blocks.{i}.resnets.{j}.*``, ``downsamplers.0.conv``
``decoder.up.{i}.block.{j}``, ``upsample.conv``              ``decoder.up_blocks.{n-1-i}.resnets.{j}``, ``upsamplers.0.conv``
``mid.block_{1,2}``, ``mid.attn_1.{norm,q,k,v,proj_out}``    ``mid_block.resnets.{0,1}``, ``attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` (1x1 convs squeezed)
resnet ``nin_shortcut``                                      ``conv_shortcut``
decoder resnet ``norm1/conv1/norm2/conv2/nin_shortcut``      ``spatial_res_block.*``
``time_stack.in_layers.{0,2}``, ``out_layers.{0,3}``         ``temporal_res_block.{norm1,conv1}``, ``{norm2,conv2}``
``mix_factor``                                               ``time_mixer.mix_factor``
``decoder.conv_out.time_mix_conv``                           ``decoder.time_conv_out``
===========================================================  =====================================================
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import torch

DECODER_PREFIX = "first_stage_model."
ENCODER_PREFIXES = ("conditioner.embedders.3.encoder.", "first_stage_model.")
MARKER = "decoder.mid.block_1.mix_factor"   # what ComfyUI also detects an SVD VAE by

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_SPATIAL = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_TEMPORAL = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2"}


def is_svd_checkpoint(keys: Iterable[str]) -> bool:
    return any(k.endswith(MARKER) for k in keys)


def _resnet(rest: str, temporal: bool) -> str:
    """Names inside one resnet: an encoder ResnetBlock2D, or a decoder SpatioTemporalResBlock."""
    if not temporal:
        part, _, leaf = rest.partition(".")
        return f"{_SPATIAL.get(part, part)}.{leaf}"
    if rest == "mix_factor":
        return "time_mixer.mix_factor"
    m = re.match(r"time_stack\.((?:in|out)_layers\.\d+)\.(.+)$", rest)
    if m:
        return f"temporal_res_block.{_TEMPORAL[m[1]]}.{m[2]}"
    part, _, leaf = rest.partition(".")
    return f"spatial_res_block.{_SPATIAL.get(part, part)}.{leaf}"


def svd_vae_name(key: str, up_blocks: int) -> str | None:
    """One LDM VAE key (without its checkpoint prefix) -> its diffusers name, or None if it is not a VAE weight."""
    m = re.match(r"(encoder|decoder)\.(.+)$", key)
    if m is None:
        return key if key.startswith("quant_conv.") else None
    side, rest = m[1], m[2]
    temporal = side == "decoder"
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    if side == "decoder" and rest.startswith("conv_out.time_mix_conv."):
        return f"decoder.time_conv_out.{rest[len('conv_out.time_mix_conv.'):]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{side}.{rest}"
    if (m := re.match(r"mid\.block_(\d)\.(.+)$", rest)):
        return f"{side}.mid_block.resnets.{int(m[1]) - 1}.{_resnet(m[2], temporal)}"
    if (m := re.match(r"mid\.attn_1\.(\w+)\.(weight|bias)$", rest)):
        return f"{side}.mid_block.attentions.0.{_ATTN[m[1]]}.{m[2]}"
    if (m := re.match(r"down\.(\d+)\.block\.(\d+)\.(.+)$", rest)):
        return f"{side}.down_blocks.{m[1]}.resnets.{m[2]}.{_resnet(m[3], False)}"
    if (m := re.match(r"down\.(\d+)\.downsample\.conv\.(.+)$", rest)):
        return f"{side}.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    if (m := re.match(r"up\.(\d+)\.block\.(\d+)\.(.+)$", rest)):
        return f"{side}.up_blocks.{up_blocks - 1 - int(m[1])}.resnets.{m[2]}.{_resnet(m[3], temporal)}"
    if (m := re.match(r"up\.(\d+)\.upsample\.conv\.(.+)$", rest)):
        return f"{side}.up_blocks.{up_blocks - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    return None


def convert_svd_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare LDM VAE keys (``encoder.*``, ``decoder.*``, ``quant_conv.*``) -> ``AutoencoderKLTemporalDecoder`` keys;
    the attention projections (1x1 convolutions ``[C, C, 1, 1]``) become Linear weights ``[C, C]``."""
    ups = {int(m[1]) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    n_up = max(ups) + 1 if ups else 0
    out = {}
    for key, value in sd.items():
        name = svd_vae_name(key, n_up)
        if name is None:
            continue
        if ".attentions.0.to_" in name and name.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[name] = value
    return out


def read_svd_vae(path: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The VAE tensors of an SVD single-file checkpoint (safetensors, memory-mapped: only these are read), with their
    prefixes removed: ``decoder.*`` from ``first_stage_model.``, ``encoder.*`` and ``quant_conv.*`` from the
    conditioning embedder where present (else from ``first_stage_model.``). ``dtype``: cast each tensor as it is read
    (no full-precision copy of the VAE in memory)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = list(f.keys())
        if not is_svd_checkpoint(keys):
            raise ValueError(f"{path} is not a Stable Video Diffusion checkpoint (no {DECODER_PREFIX}{MARKER})")
        wanted: dict[str, str] = {k[len(DECODER_PREFIX):]: k for k in keys if k.startswith(DECODER_PREFIX + "decoder.")}
        for part in ("encoder.", "quant_conv."):
            for prefix in ENCODER_PREFIXES:
                found = {k[len(prefix):]: k for k in keys if k.startswith(prefix + part)}
                if found:
                    wanted.update(found)
                    break
        return {bare: _cast(f.get_tensor(full), dtype) for bare, full in wanted.items()}


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


__all__ = ["DECODER_PREFIX", "ENCODER_PREFIXES", "convert_svd_vae", "is_svd_checkpoint", "read_svd_vae",
           "svd_vae_name"]
