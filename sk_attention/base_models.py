"""The SD1.5 parts HelloMeme builds on: UNet, VAE (and the CLIP text encoder), from the files users have.

Sources:

* a diffusers folder: a pipeline root with ``unet/`` and ``vae/`` (``text_encoder/``) subfolders, or one component
  folder (``config.json`` + weights); a folder without ``config.json`` uses the pack's embedded SD1.5 config;
* a single-file SD1.5 checkpoint as ComfyUI keeps them in ``models/checkpoints`` (ldm key layout:
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``), converted with diffusers'
  single-file conversion helpers against the embedded diffusers configs and loaded strictly;
* a standalone VAE file (``models/vae``) in either key layout.

Every model is built from its config on the meta device and filled by a strict load (never ``from_pretrained``), so a
wrong file fails with the offending keys named.

LoRA: :func:`merge_lora` merges a kohya (``lora_unet_*`` / ``lora_te_*``, diffusers or ldm module names) or
diffusers/PEFT (``unet.<module>.lora_A/B``) SD1.5 LoRA into the UNet (and text encoder) weights at a scale.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from ..loaders.checkpoint import (CheckpointKeyError, build_and_load, embedded_config,
                                  read_diffusers_folder, read_state_dict, strip_config)

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
LDM_CLIP_PREFIXES = ("cond_stage_model.transformer.",)
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class SD15Parts:
    """What a checkpoint provided (``None`` for parts not asked for or absent)."""

    unet: Optional[nn.Module] = None
    vae: Optional[nn.Module] = None
    text_encoder: Optional[nn.Module] = None
    source: str = ""
    notes: list[str] = field(default_factory=list)


# ---- builders ---------------------------------------------------------------------------------------------------
def _unet_factory(config: dict):
    from diffusers import UNet2DConditionModel

    cfg = strip_config(config)
    return lambda: UNet2DConditionModel.from_config(cfg)


def _vae_factory(config: dict):
    from diffusers import AutoencoderKL

    cfg = strip_config(config)
    return lambda: AutoencoderKL.from_config(cfg)


def _text_encoder_factory(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"})
    return lambda: CLIPTextModel(cfg)


def build_unet(sd: Mapping[str, torch.Tensor], config: dict | None = None, source: str = "unet",
               dtype: torch.dtype | None = None):
    """A ``UNet2DConditionModel`` from ``config`` (default: embedded SD1.5) filled strictly with ``sd``."""
    return build_and_load(_unet_factory(config or embedded_config("sd15_unet")), sd, source, dtype=dtype).eval()


def build_vae(sd: Mapping[str, torch.Tensor], config: dict | None = None, source: str = "vae",
              dtype: torch.dtype | None = None):
    """An ``AutoencoderKL`` from ``config`` (default: embedded SD1.5) filled strictly with ``sd``."""
    return build_and_load(_vae_factory(config or embedded_config("sd15_vae")), sd, source, dtype=dtype).eval()


def build_text_encoder(sd: Mapping[str, torch.Tensor], config: dict | None = None, source: str = "text_encoder",
                       dtype: torch.dtype | None = None):
    """A transformers ``CLIPTextModel`` (SD1.5: CLIP ViT-L/14 text tower) filled strictly with ``sd``."""
    sd = {k: v for k, v in sd.items() if not k.endswith("embeddings.position_ids")}  # a buffer in older files
    return build_and_load(_text_encoder_factory(config or embedded_config("sd15_text_encoder")), sd, source,
                          dtype=dtype).eval()


# ---- diffusers folders ------------------------------------------------------------------------------------------
def _folder_config(folder: Path, embedded: str) -> dict:
    return None if (folder / "config.json").is_file() else embedded_config(embedded)


def load_unet_folder(folder: str | Path, dtype: torch.dtype | None = None):
    """A UNet from a diffusers component folder (``config.json`` + weights; embedded SD1.5 config if absent)."""
    folder = Path(folder)
    config, sd = read_diffusers_folder(folder, config=_folder_config(folder, "sd15_unet"))
    return build_unet(sd, config, source=str(folder), dtype=dtype)


def load_vae_folder(folder: str | Path, dtype: torch.dtype | None = None):
    """A VAE from a diffusers component folder (``config.json`` + weights; embedded SD1.5 config if absent)."""
    folder = Path(folder)
    config, sd = read_diffusers_folder(folder, config=_folder_config(folder, "sd15_vae"))
    return build_vae(sd, config, source=str(folder), dtype=dtype)


def load_text_encoder_folder(folder: str | Path, dtype: torch.dtype | None = None):
    folder = Path(folder)
    config, sd = read_diffusers_folder(folder, config=_folder_config(folder, "sd15_text_encoder"))
    return build_text_encoder(sd, config, source=str(folder), dtype=dtype)


# ---- single files (ldm layout) ----------------------------------------------------------------------------------
def is_ldm_checkpoint(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(LDM_UNET_PREFIX) for k in sd)


def convert_ldm_unet(sd: Mapping[str, torch.Tensor], config: dict | None = None) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` keys -> diffusers UNet keys (diffusers' converter, against ``config``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = strip_config(config or embedded_config("sd15_unet"))
    if "layers_per_block" not in config:
        config["layers_per_block"] = 2
    return convert_ldm_unet_checkpoint(dict(sd), config)


def convert_ldm_vae(sd: Mapping[str, torch.Tensor], config: dict | None = None) -> dict[str, torch.Tensor]:
    """``first_stage_model.*`` (or bare ldm VAE) keys -> diffusers AutoencoderKL keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = strip_config(config or embedded_config("sd15_vae"))
    return convert_ldm_vae_checkpoint(dict(sd), config)


def convert_ldm_text_encoder(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.*`` keys -> transformers CLIPTextModel keys."""
    out = {}
    for k, v in sd.items():
        for p in LDM_CLIP_PREFIXES:
            if k.startswith(p):
                name = k[len(p):]
                out[name if name.startswith("text_model.") else "text_model." + name] = v
    return out


def load_single_file(path: str | Path, parts: tuple[str, ...] = ("unet", "vae"), dtype: torch.dtype | None = None,
                     unet_config: dict | None = None, vae_config: dict | None = None,
                     text_encoder_config: dict | None = None) -> SD15Parts:
    """Load the requested ``parts`` of a single-file SD1.5 checkpoint (ldm layout). Parts the file lacks raise,
    except the text encoder (returned as ``None`` with a note)."""
    path = Path(path)
    sd = read_state_dict(path)
    if not is_ldm_checkpoint(sd):
        raise CheckpointKeyError(str(path), [LDM_UNET_PREFIX + "*"], [], [],
                                 what="a single-file SD1.5 checkpoint (ldm layout)")
    out = SD15Parts(source=str(path))
    if "unet" in parts:
        out.unet = build_unet(convert_ldm_unet(sd, unet_config), unet_config, source=f"{path} (UNet)", dtype=dtype)
    if "vae" in parts:
        vae_sd = {k: v for k, v in sd.items() if k.startswith(LDM_VAE_PREFIXES)}
        if not vae_sd:
            raise CheckpointKeyError(str(path), ["first_stage_model.*"], [], [], what="an SD1.5 VAE")
        out.vae = build_vae(convert_ldm_vae(vae_sd, vae_config), vae_config, source=f"{path} (VAE)", dtype=dtype)
    if "text_encoder" in parts:
        te_sd = convert_ldm_text_encoder(sd)
        if te_sd:
            out.text_encoder = build_text_encoder(te_sd, text_encoder_config, source=f"{path} (text encoder)",
                                                  dtype=dtype)
        else:
            out.notes.append("no cond_stage_model.transformer.* keys: text encoder not in this file")
    del sd
    return out


def load_vae_file(path: str | Path, dtype: torch.dtype | None = None, config: dict | None = None):
    """A standalone VAE file (``models/vae``): diffusers keys, bare ldm keys or ``first_stage_model.*`` keys."""
    path = Path(path)
    if path.is_dir():
        return load_vae_folder(path, dtype=dtype)
    sd = read_state_dict(path)
    if not any(k.startswith("encoder.down_blocks.") or k.startswith("decoder.up_blocks.") for k in sd):
        sd = convert_ldm_vae(sd, config)
    return build_vae(sd, config, source=str(path), dtype=dtype)


def load_sd15(path: str | Path, parts: tuple[str, ...] = ("unet", "vae"),
              dtype: torch.dtype | None = None) -> SD15Parts:
    """The requested SD1.5 parts from a single file or a diffusers folder (pipeline root or component folder)."""
    path = Path(path)
    if path.is_file():
        return load_single_file(path, parts, dtype=dtype)
    if not path.is_dir():
        raise FileNotFoundError(f"SD1.5 checkpoint not found: {path}")
    out = SD15Parts(source=str(path))
    loaders = {"unet": load_unet_folder, "vae": load_vae_folder, "text_encoder": load_text_encoder_folder}
    if any((path / p).is_dir() for p in parts):
        for p in parts:
            if (path / p).is_dir():
                setattr(out, p, loaders[p](path / p, dtype=dtype))
            else:
                out.notes.append(f"{path} has no {p}/ folder")
        missing = [p for p in parts if p != "text_encoder" and getattr(out, p) is None]
        if missing:
            raise FileNotFoundError(f"{path} lacks the {', '.join(missing)} folder(s) of an SD1.5 pipeline")
        return out
    if len(parts) != 1:
        raise FileNotFoundError(f"{path} is a single component folder; ask for one part (got {parts})")
    setattr(out, parts[0], loaders[parts[0]](path, dtype=dtype))
    return out


# ---- ldm <-> diffusers module names (UNet) ------------------------------------------------------------------------
_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                  ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _resnet_inner(rest: str) -> str:
    for a, b in _RESNET_TO_LDM:
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def diffusers_to_ldm_unet_name(name: str, config: dict | None = None) -> str:
    """Map a diffusers SD1.x UNet parameter or module name to its ldm name (``input_blocks.4.1.proj_in`` ...).

    Used to resolve LoRAs written with ldm module names; the inverse of diffusers' ``convert_ldm_unet_checkpoint``
    for the SD1.x layout.
    """
    config = config or embedded_config("sd15_unet")
    per = int(config.get("layers_per_block", 2))
    up_types = list(config.get("up_block_types", []))
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in fixed.items():
        if name == a or name.startswith(a + "."):
            return b + name[len(a):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(.*)", name)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{(b + 1) * (per + 1)}.0.op" + rest.replace(".conv", "", 1)
        idx = 1 + b * (per + 1) + j
        if kind == "resnets":
            return f"input_blocks.{idx}.0" + ("." + _resnet_inner(rest[1:]) if rest else "")
        return f"input_blocks.{idx}.1" + rest
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(.*)", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}" + ("." + _resnet_inner(rest[1:]) if rest else "")
        return "middle_block.1" + rest
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(.*)", name)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            has_attn = b < len(up_types) and "CrossAttn" in up_types[b]
            return f"output_blocks.{b * (per + 1) + per}.{2 if has_attn else 1}" + rest
        idx = b * (per + 1) + j
        if kind == "resnets":
            return f"output_blocks.{idx}.0" + ("." + _resnet_inner(rest[1:]) if rest else "")
        return f"output_blocks.{idx}.1" + rest
    return name


# ---- LoRA -------------------------------------------------------------------------------------------------------
@dataclass
class LoraReport:
    applied: list[str] = field(default_factory=list)  # module names merged
    skipped: list[str] = field(default_factory=list)  # LoRA entries not applied (unknown module / unsupported kind)

    def __str__(self) -> str:
        return f"LoRA: merged {len(self.applied)} layers, skipped {len(self.skipped)}"


_PAIR_PATTERNS = (
    (re.compile(r"^(.*)\.lora_down\.weight$"), re.compile(r"^(.*)\.lora_up\.weight$")),
    (re.compile(r"^(.*)\.lora_A(?:\.default)?\.weight$"), re.compile(r"^(.*)\.lora_B(?:\.default)?\.weight$")),
    (re.compile(r"^(.*)\.lora\.down\.weight$"), re.compile(r"^(.*)\.lora\.up\.weight$")),
    (re.compile(r"^(.*)_lora\.down\.weight$"), re.compile(r"^(.*)_lora\.up\.weight$")),  # old attn-processor LoRAs
)


def _lora_pairs(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict], list[str]]:
    """{name: {down, up, alpha}} and the keys that are not part of a down/up pair."""
    pairs: dict[str, dict] = {}
    used = set()
    for down_re, up_re in _PAIR_PATTERNS:
        ups = {mu[1]: u for u in sd if (mu := up_re.match(u))}
        for k in sd:
            m = down_re.match(k)
            if not m or m[1] not in ups or k in used:
                continue
            name, up_key = m[1], ups[m[1]]
            entry = pairs.setdefault(name, {})
            entry["down"], entry["up"] = sd[k], sd[up_key]
            used.update((k, up_key))
            if f"{name}.alpha" in sd:
                entry["alpha"] = float(sd[f"{name}.alpha"])
                used.add(f"{name}.alpha")
    leftover = [k for k in sd if k not in used]
    return pairs, leftover


def _normalise_processor_name(name: str) -> str:
    # unet.x.attn1.processor.to_q -> unet.x.attn1.to_q ; processor.to_out -> to_out.0
    name = name.replace(".processor.", ".")
    if name.endswith(".to_out"):
        name += ".0"
    return name


def _module_tables(model: nn.Module, ldm_config: dict | None):
    dotted = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    flat = {n.replace(".", "_"): n for n in dotted}
    if ldm_config is not None:
        for n in list(dotted):
            flat.setdefault(diffusers_to_ldm_unet_name(n, ldm_config).replace(".", "_"), n)
    return dotted, flat


@torch.no_grad()
def _merge_pair(module: nn.Module, down: torch.Tensor, up: torch.Tensor, alpha: float | None, scale: float) -> None:
    w = module.weight
    rank = down.shape[0]
    factor = scale * ((alpha / rank) if alpha is not None else 1.0)
    delta = up.to(torch.float32).flatten(1) @ down.to(torch.float32).flatten(1)  # (out, in·kh·kw)
    if delta.numel() != w.numel():
        raise ValueError(f"LoRA shapes down {tuple(down.shape)} / up {tuple(up.shape)} do not fit weight "
                         f"{tuple(w.shape)}")
    w.copy_((w.to(torch.float32) + factor * delta.reshape(w.shape).to(w.device)).to(w.dtype))


def merge_lora(unet: nn.Module, lora: Mapping[str, torch.Tensor] | str | Path, scale: float = 1.0,
               text_encoder: Optional[nn.Module] = None, unet_config: dict | None = None) -> LoraReport:
    """Merge an SD1.5 LoRA into ``unet`` (and ``text_encoder`` if given), in place: W += scale·(alpha/rank)·up@down.

    Accepts kohya files (``lora_unet_<module>`` / ``lora_te_<module>`` with ``lora_down``/``lora_up``/``alpha``, module
    names in diffusers or ldm spelling) and diffusers/PEFT files (``unet.<module>.lora_A/lora_B`` or
    ``.lora.down/.lora.up``). Entries for modules that do not exist, or of unsupported kinds (LoHa, LoKr, ...), are
    reported in ``skipped``; a LoRA that matches no UNet or text-encoder layer raises ``ValueError``.
    """
    source = str(lora) if isinstance(lora, (str, Path)) else "LoRA state dict"
    sd = read_state_dict(lora) if isinstance(lora, (str, Path)) else dict(lora)
    pairs, leftover = _lora_pairs(sd)
    report = LoraReport(skipped=[k for k in leftover if not k.endswith(".alpha")])
    cfg = dict(getattr(unet, "config", {}) or {}) or unet_config or embedded_config("sd15_unet")
    u_dotted, u_flat = _module_tables(unet, cfg)
    t_dotted, t_flat = _module_tables(text_encoder, None) if text_encoder is not None else ({}, {})

    for name, entry in pairs.items():
        target = None
        if name.startswith("lora_unet_"):
            key = name[len("lora_unet_"):]
            n = u_flat.get(key)
            target = (u_dotted[n], n) if n else None
        elif name.startswith(("lora_te_", "lora_te1_")):
            key = name.split("_", 2)[2]
            n = t_flat.get(key)
            target = (t_dotted[n], n) if n else None
        else:
            dotted = _normalise_processor_name(name)
            if dotted.startswith("unet."):
                n = dotted[len("unet."):]
                target = (u_dotted[n], n) if n in u_dotted else None
            elif dotted.startswith("text_encoder."):
                n = dotted[len("text_encoder."):]
                target = (t_dotted[n], n) if n in t_dotted else None
            elif dotted in u_dotted:
                target = (u_dotted[dotted], dotted)
        if target is None:
            report.skipped.append(name)
            continue
        _merge_pair(target[0], entry["down"], entry["up"], entry.get("alpha"), scale)
        report.applied.append(target[1])
    if not report.applied:
        raise ValueError(f"{source}: no LoRA entry matched a UNet or text-encoder layer (is it an SD1.5 LoRA?); "
                         f"first entries: {', '.join(list(sd)[:5])}")
    return report
