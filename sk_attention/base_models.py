"""The SD1.5 parts HelloMeme builds on: UNet, VAE (and the CLIP text encoder), from the files users have.

Sources:

* a diffusers folder: a pipeline root with ``unet/`` and ``vae/`` (``text_encoder/``) subfolders, or one component
  folder (``config.json`` + weights); a folder without ``config.json`` uses the pack's embedded SD1.5 config;
* a single-file SD1.5 checkpoint as ComfyUI keeps them in ``models/checkpoints`` (ldm key layout:
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.[text_model.]*``, plus DDPM
  schedule buffers and, in non-emaonly files, ``model_ema.*``), converted with diffusers' single-file conversion
  helpers against the embedded diffusers configs;
* a standalone VAE file (``models/vae``) or folder in any of the released layouts: diffusers (new attention names),
  diffusers before 0.14 (``query/key/value/proj_attn``: ``stabilityai/sd-vae-ft-mse`` and the SD1.5 ``vae/`` folder),
  ldm with ``first_stage_model.`` and ldm without it (``vae-ft-mse-840000-ema-pruned``, with ``loss.*`` and
  ``model_ema.*`` extras).

Every model is built from its config on the meta device and filled under a :class:`~..loaders.policy.LoadPolicy`
(never ``from_pretrained``): known layouts are converted, known extras dropped with a log line, other extras warned
about, and a missing or mis-shaped key fails naming the file and the keys. The dtype is the file's (an fp16 file under
an fp32 name stays fp16) unless the caller asks for one. Each module carries its ``load_report``.

LoRA: :func:`merge_lora` merges a kohya (``lora_unet_*`` / ``lora_te_*``, diffusers or ldm module names) or
diffusers/PEFT (``unet.<module>.lora_A/B``) SD1.5 LoRA into the UNet (and text encoder) weights at a scale.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from ..loaders.checkpoint import (CheckpointKeyError, embedded_config, load_with_policy, read_diffusers_folder,
                                  read_state_dict, strip_config)
from ..loaders.policy import (EMA_DROP, LEGACY_ATTENTION, LOSS_DROP, OPTIMIZER_DROPS, SCHEDULE_DROP, Conversion, Drop,
                              LoadPolicy, LoadReport, dtype_counts, log_report)

log = logging.getLogger(__name__)

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
LDM_CLIP_PREFIXES = ("cond_stage_model.transformer.",)
LDM_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")

# ---- loading policies -------------------------------------------------------------------------------------------
_TRAINING_EXTRAS = (SCHEDULE_DROP, EMA_DROP, LOSS_DROP, *OPTIMIZER_DROPS)
UNET_POLICY = LoadPolicy("SD1.5 UNet", unwrap=("state_dict",), drops=_TRAINING_EXTRAS)
VAE_POLICY = LoadPolicy("SD1.5 VAE", unwrap=("state_dict",), conversions=(LEGACY_ATTENTION,), drops=_TRAINING_EXTRAS)
TEXT_ENCODER_POLICY = LoadPolicy(
    "SD1.5 CLIP text encoder", unwrap=("state_dict",),
    drops=(Drop(r"(.*\.)?embeddings\.position_ids$", "position_ids buffer (recomputed; float in some files)"),
           *_TRAINING_EXTRAS))


@dataclass
class SD15Parts:
    """What a checkpoint provided (``None`` for parts not asked for or absent). ``report``: what the load did with
    the file (for a single file, ``report.parts`` holds one report per component)."""

    unet: Optional[nn.Module] = None
    vae: Optional[nn.Module] = None
    text_encoder: Optional[nn.Module] = None
    source: str = ""
    notes: list[str] = field(default_factory=list)
    report: Optional[LoadReport] = None


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
               dtype: torch.dtype | None = None, report: LoadReport | None = None):
    """A ``UNet2DConditionModel`` from ``config`` (default: embedded SD1.5) filled with ``sd`` under
    :data:`UNET_POLICY`."""
    return load_with_policy(_unet_factory(config or embedded_config("sd15_unet")), sd, UNET_POLICY, source,
                            dtype=dtype, report=report).eval()


def build_vae(sd: Mapping[str, torch.Tensor], config: dict | None = None, source: str = "vae",
              dtype: torch.dtype | None = None, report: LoadReport | None = None):
    """An ``AutoencoderKL`` from ``config`` (default: embedded SD1.5) filled with ``sd`` in any released layout
    (diffusers new or legacy attention names, ldm with or without ``first_stage_model.``) under :data:`VAE_POLICY`."""
    config = config or embedded_config("sd15_vae")
    policy = VAE_POLICY
    if is_ldm_vae(sd):
        policy = VAE_POLICY.with_(conversions=(ldm_vae_conversion(config),))
    return load_with_policy(_vae_factory(config), sd, policy, source, dtype=dtype, report=report).eval()


def build_text_encoder(sd: Mapping[str, torch.Tensor], config: dict | None = None, source: str = "text_encoder",
                       dtype: torch.dtype | None = None, report: LoadReport | None = None):
    """A transformers ``CLIPTextModel`` (SD1.5: CLIP ViT-L/14 text tower) filled with ``sd`` under
    :data:`TEXT_ENCODER_POLICY` (``position_ids``, a buffer in older files and sometimes float, is dropped)."""
    factory = _text_encoder_factory(config or embedded_config("sd15_text_encoder"))
    with torch.device("meta"):
        nested = any(k.startswith("text_model.") for k in factory().state_dict())
    policy = TEXT_ENCODER_POLICY.with_(conversions=(_text_model_level(nested),))
    return load_with_policy(factory, sd, policy, source, dtype=dtype, report=report).eval()


def _text_model_level(nested: bool) -> Conversion:
    """The released CLIP files name the tower ``text_model.*``; transformers 5's ``CLIPTextModel`` has no such level
    (older versions do): add or remove it to match the installed class."""

    def apply(sd):
        if nested:
            out = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
        else:
            out = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in sd.items()}
        return out, sum(a != b for a, b in zip(sd, out))

    return Conversion("CLIP 'text_model.' level " + ("added" if nested else "removed (transformers 5 layout)"), apply)


# ---- diffusers folders ------------------------------------------------------------------------------------------
def _folder_config(folder: Path, embedded: str) -> dict:
    return None if (folder / "config.json").is_file() else embedded_config(embedded)


def load_unet_folder(folder: str | Path, dtype: torch.dtype | None = None):
    """A UNet from a diffusers component folder (``config.json`` + weights; embedded SD1.5 config if absent)."""
    folder = Path(folder)
    config, sd = read_diffusers_folder(folder, dtype=dtype, config=_folder_config(folder, "sd15_unet"))
    return build_unet(sd, config, source=str(folder), dtype=dtype)


def load_vae_folder(folder: str | Path, dtype: torch.dtype | None = None):
    """A VAE from a diffusers component folder (``config.json`` + weights; embedded SD1.5 config if absent); the
    released SD1.5 ``vae/`` folder and sd-vae-ft-mse use the pre-0.14 attention names, which are converted."""
    folder = Path(folder)
    config, sd = read_diffusers_folder(folder, dtype=dtype, config=_folder_config(folder, "sd15_vae"))
    return build_vae(sd, config, source=str(folder), dtype=dtype)


def load_text_encoder_folder(folder: str | Path, dtype: torch.dtype | None = None):
    folder = Path(folder)
    config, sd = read_diffusers_folder(folder, dtype=dtype, config=_folder_config(folder, "sd15_text_encoder"))
    return build_text_encoder(sd, config, source=str(folder), dtype=dtype)


# ---- single files (ldm layout) ----------------------------------------------------------------------------------
def is_ldm_checkpoint(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(LDM_UNET_PREFIX) for k in sd)


def is_ldm_vae(sd: Mapping[str, torch.Tensor]) -> bool:
    """ldm VAE keys (``encoder.down.0.block.0...``, with or without ``first_stage_model.``) rather than diffusers'."""
    diffusers = any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd)
    ldm = any(re.match(r"(first_stage_model\.|vae\.)?(encoder\.down|decoder\.up)\.\d+\.", k) for k in sd)
    return ldm and not diffusers


def convert_ldm_unet(sd: Mapping[str, torch.Tensor], config: dict | None = None) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` keys -> diffusers UNet keys (diffusers' converter, against ``config``); other keys
    of ``sd`` are not looked at."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = strip_config(config or embedded_config("sd15_unet"))
    if "layers_per_block" not in config:
        config["layers_per_block"] = 2
    return convert_ldm_unet_checkpoint({k: v for k, v in sd.items() if k.startswith(LDM_UNET_PREFIX)}, config)


def convert_ldm_vae(sd: Mapping[str, torch.Tensor], config: dict | None = None) -> dict[str, torch.Tensor]:
    """ldm VAE keys (``first_stage_model.*`` or bare) -> diffusers AutoencoderKL keys; the 1x1-conv attention weights
    ``[C, C, 1, 1]`` are squeezed to Linear ``[C, C]``. Keys that are not VAE weights are not looked at."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = strip_config(config or embedded_config("sd15_vae"))
    prefix = next((p for p in LDM_VAE_PREFIXES if any(k.startswith(p) for k in sd)), "")
    vae = {k[len(prefix):]: v for k, v in sd.items()
           if k.startswith(prefix) and k[len(prefix):].startswith(LDM_VAE_PARTS)}
    return convert_ldm_vae_checkpoint(vae, config)


def ldm_vae_conversion(config: dict | None = None) -> Conversion:
    """The ldm -> diffusers VAE conversion as a policy step: VAE weights are converted, every other key (``loss.*``,
    ``model_ema.*`` ...) passes through to the drop rules and the unexpected-key warning."""

    def apply(sd):
        prefix = next((p for p in LDM_VAE_PREFIXES if any(k.startswith(p) for k in sd)), "")
        is_vae = [k for k in sd if k.startswith(prefix) and k[len(prefix):].startswith(LDM_VAE_PARTS)]
        converted = convert_ldm_vae({k: sd[k] for k in is_vae}, config)
        if len(converted) < len(is_vae):
            log.warning("ldm VAE: %d of %d keys have no diffusers counterpart and were not converted",
                        len(is_vae) - len(converted), len(is_vae))
        rest = {k: v for k, v in sd.items() if k not in set(is_vae)}
        return {**rest, **converted}, len(is_vae)

    return Conversion("ldm VAE layout -> diffusers AutoencoderKL", apply)


def convert_ldm_text_encoder(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.*`` keys (with or without the ``text_model.`` level) -> CLIPTextModel keys."""
    out = {}
    for k, v in sd.items():
        for p in LDM_CLIP_PREFIXES:
            if k.startswith(p):
                name = k[len(p):]
                out[name if name.startswith("text_model.") else "text_model." + name] = v
    return out


def _split_single_file(sd: Mapping[str, torch.Tensor], report: LoadReport) -> dict[str, dict]:
    """Partition an ldm single file into its components; training extras are dropped (reported), other keys that
    belong to no component are ignored with a warning."""
    groups: dict[str, dict] = {"unet": {}, "vae": {}, "text_encoder": {}}
    extras = []
    for k, v in sd.items():
        if k.startswith(LDM_UNET_PREFIX):
            groups["unet"][k] = v
        elif k.startswith(LDM_VAE_PREFIXES):
            groups["vae"][k] = v
        elif k.startswith(LDM_CLIP_PREFIXES):
            groups["text_encoder"][k] = v
        else:
            rule = next((d for d in _TRAINING_EXTRAS if d.matches(k)), None)
            if rule is not None:
                report.drop(rule.reason, [k])
            else:
                extras.append(k)
    report.unexpected = extras
    return groups


def _note_unconverted(report: LoadReport, what: str, n_in: int, n_out: int) -> None:
    """diffusers' converters skip keys they do not know without a word: say how many were left behind."""
    if n_out < n_in:
        report.converted.append(f"{what}: {n_in - n_out} of {n_in} keys have no diffusers counterpart (skipped)")
        log.warning("%s: %d of %d %s keys have no diffusers counterpart and were skipped", report.source,
                    n_in - n_out, n_in, what)


def load_single_file(path: str | Path, parts: tuple[str, ...] = ("unet", "vae"), dtype: torch.dtype | None = None,
                     unet_config: dict | None = None, vae_config: dict | None = None,
                     text_encoder_config: dict | None = None) -> SD15Parts:
    """Load the requested ``parts`` of a single-file SD1.5 checkpoint (ldm layout). Parts the file lacks raise,
    except the text encoder (returned as ``None`` with a note). ``result.report`` lists what was dropped (schedule
    buffers, ``model_ema.*``, ``position_ids``), ignored and converted, per component, and the file's dtype."""
    path = Path(path)
    sd = read_state_dict(path, dtype=dtype)  # cast as read: no full-precision copy of the file in memory
    if not is_ldm_checkpoint(sd):
        raise CheckpointKeyError(str(path), [LDM_UNET_PREFIX + "*"], [], [],
                                 what="a single-file SD1.5 checkpoint (ldm layout)",
                                 hint="Probable cause: a wrong file? This is not a full SD1.5 checkpoint (a VAE, a "
                                      "LoRA or a diffusers component?).")
    report = LoadReport(source=str(path), policy="SD1.5 single file (ldm)",
                        dtypes=getattr(sd, "file_dtypes", None) or dtype_counts(sd))
    groups = _split_single_file(sd, report)
    del sd
    for part, keys in groups.items():
        if part not in parts and keys:
            report.drop(f"{part} weights, not requested from this file", keys)
    log_report(report)
    out = SD15Parts(source=str(path), report=report)
    if "unet" in parts:
        sub = LoadReport(source=f"{path} (UNet)", dtypes=dtype_counts(groups["unet"]))
        converted = convert_ldm_unet(groups["unet"], unet_config)
        sub.converted.append(f"ldm UNet layout -> diffusers: {len(groups['unet'])} keys")
        _note_unconverted(sub, "ldm UNet", len(groups["unet"]), len(converted))
        out.unet = build_unet(converted, unet_config, source=sub.source, dtype=dtype, report=sub)
        report.parts["unet"] = sub
    if "vae" in parts:
        if not groups["vae"]:
            raise CheckpointKeyError(str(path), ["first_stage_model.*"], [], [], what="an SD1.5 VAE")
        out.vae = build_vae(groups["vae"], vae_config, source=f"{path} (VAE)", dtype=dtype)
        report.parts["vae"] = out.vae.load_report
    if "text_encoder" in parts:
        te_sd = convert_ldm_text_encoder(groups["text_encoder"])
        if te_sd:
            out.text_encoder = build_text_encoder(te_sd, text_encoder_config, source=f"{path} (text encoder)",
                                                  dtype=dtype)
            report.parts["text_encoder"] = out.text_encoder.load_report
        else:
            out.notes.append("no cond_stage_model.transformer.* keys: text encoder not in this file")
    return out


def load_vae_file(path: str | Path, dtype: torch.dtype | None = None, config: dict | None = None):
    """A standalone VAE file (``models/vae``) or folder in any released layout: diffusers keys (new or pre-0.14
    attention names), bare ldm keys or ``first_stage_model.*`` keys (a full SD1.5 checkpoint also works: its VAE is
    taken). The report is the module's ``load_report``."""
    path = Path(path)
    if path.is_dir():
        if config is None:
            return load_vae_folder(path, dtype=dtype)
        _, sd = read_diffusers_folder(path, dtype=dtype, config=config)
        return build_vae(sd, config, source=str(path), dtype=dtype)
    sd = read_state_dict(path, dtype=dtype)
    if is_ldm_checkpoint(sd):  # a full single file handed over as a VAE: take its VAE, say what was left out
        unet_keys = [k for k in sd if k.startswith((LDM_UNET_PREFIX,) + LDM_CLIP_PREFIXES)]
        for k in unet_keys:
            del sd[k]
        report = LoadReport(source=str(path), policy=VAE_POLICY.name)
        report.drop("UNet / text encoder of a full SD1.5 checkpoint (only its VAE is used here)", unet_keys)
        return build_vae(sd, config, source=str(path), dtype=dtype, report=report)
    return build_vae(sd, config, source=str(path), dtype=dtype)


def load_sd15(path: str | Path, parts: tuple[str, ...] = ("unet", "vae"),
              dtype: torch.dtype | None = None) -> SD15Parts:
    """The requested SD1.5 parts from a single file or a diffusers folder (pipeline root or component folder)."""
    path = Path(path)
    if path.is_file():
        return load_single_file(path, parts, dtype=dtype)
    if not path.is_dir():
        raise FileNotFoundError(f"SD1.5 checkpoint not found: {path}")
    out = SD15Parts(source=str(path), report=LoadReport(source=str(path), policy="SD1.5 diffusers folder"))
    loaders = {"unet": load_unet_folder, "vae": load_vae_folder, "text_encoder": load_text_encoder_folder}
    if any((path / p).is_dir() for p in parts):
        for p in parts:
            if (path / p).is_dir():
                setattr(out, p, loaders[p](path / p, dtype=dtype))
                out.report.parts[p] = getattr(out, p).load_report
            else:
                out.notes.append(f"{path} has no {p}/ folder")
        missing = [p for p in parts if p != "text_encoder" and getattr(out, p) is None]
        if missing:
            raise FileNotFoundError(f"{path} lacks the {', '.join(missing)} folder(s) of an SD1.5 pipeline")
        return out
    if len(parts) != 1:
        raise FileNotFoundError(f"{path} is a single component folder; ask for one part (got {parts})")
    setattr(out, parts[0], loaders[parts[0]](path, dtype=dtype))
    out.report = getattr(out, parts[0]).load_report
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
    """What a LoRA merge did. Nothing is dropped silently: every entry of the file is applied or listed here."""

    applied: list[str] = field(default_factory=list)  # UNet module names merged
    applied_text_encoder: list[str] = field(default_factory=list)  # text-encoder module names merged
    skipped: list[str] = field(default_factory=list)  # entries not applied (unknown module / unsupported kind)
    text_encoder_skipped: list[str] = field(default_factory=list)  # text-encoder entries with no text encoder given
    unet_scale: float = 1.0
    text_encoder_scale: float = 1.0

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        """One line per fact, for a node's report output and the log."""
        def some(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")

        out = [f"LoRA: merged {len(self.applied)} UNet layer(s) at {self.unet_scale:g}"
               + (f" and {len(self.applied_text_encoder)} text-encoder layer(s) at {self.text_encoder_scale:g}"
                  if self.applied_text_encoder else "")]
        if self.text_encoder_skipped:
            out.append(f"LoRA: {len(self.text_encoder_skipped)} text-encoder layer(s) NOT applied (no text encoder "
                       f"here: the prompt comes from your CLIP); to match the original, load the same LoRA on the "
                       f"CLIP (core LoraLoader: strength_model 0, strength_clip {self.text_encoder_scale:g}): "
                       f"{some(self.text_encoder_skipped)}")
        if self.skipped:
            out.append(f"LoRA: {len(self.skipped)} entr(y/ies) NOT applied (no matching layer, or an unsupported "
                       f"kind such as LoHa/LoKr): {some(self.skipped)}")
        return out


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
               text_encoder: Optional[nn.Module] = None, unet_config: dict | None = None,
               text_encoder_scale: float | None = None) -> LoraReport:
    """Merge an SD1.5 LoRA into ``unet`` (and ``text_encoder`` if given), in place: W += s·(alpha/rank)·up@down, with
    ``s = scale`` for the UNet and ``text_encoder_scale`` (default: ``scale``) for the text encoder. (The released
    HelloMeme merges the UNet LoRA at 1.0 and passes its ``lora_scale`` to the text encoder only.)

    Accepts kohya files (``lora_unet_<module>`` / ``lora_te_<module>`` with ``lora_down``/``lora_up``/``alpha``, module
    names in diffusers or ldm spelling) and diffusers/PEFT files (``unet.<module>.lora_A/lora_B`` or
    ``.lora.down/.lora.up``). Text-encoder entries without a ``text_encoder`` are reported in
    ``text_encoder_skipped``; entries for modules that do not exist, or of unsupported kinds (LoHa, LoKr, ...), in
    ``skipped``. A LoRA that matches no UNet or text-encoder layer raises ``ValueError``.
    """
    source = str(lora) if isinstance(lora, (str, Path)) else "LoRA state dict"
    sd = read_state_dict(lora) if isinstance(lora, (str, Path)) else dict(lora)
    te_scale = scale if text_encoder_scale is None else text_encoder_scale
    pairs, leftover = _lora_pairs(sd)
    report = LoraReport(skipped=[k for k in leftover if not k.endswith(".alpha")], unet_scale=float(scale),
                        text_encoder_scale=float(te_scale))
    cfg = dict(getattr(unet, "config", {}) or {}) or unet_config or embedded_config("sd15_unet")
    u_dotted, u_flat = _module_tables(unet, cfg)
    t_dotted, t_flat = _module_tables(text_encoder, None) if text_encoder is not None else ({}, {})

    for name, entry in pairs.items():
        target, is_te = None, False
        if name.startswith("lora_unet_"):
            key = name[len("lora_unet_"):]
            n = u_flat.get(key)
            target = (u_dotted[n], n) if n else None
        elif name.startswith(("lora_te_", "lora_te1_")):
            is_te = True
            key = name.split("_", 2)[2]
            n = t_flat.get(key)
            target = (t_dotted[n], n) if n else None
        else:
            dotted = _normalise_processor_name(name)
            if dotted.startswith("unet."):
                n = dotted[len("unet."):]
                target = (u_dotted[n], n) if n in u_dotted else None
            elif dotted.startswith("text_encoder."):
                is_te = True
                n = dotted[len("text_encoder."):]
                target = (t_dotted[n], n) if n in t_dotted else None
            elif dotted in u_dotted:
                target = (u_dotted[dotted], dotted)
        if target is None:
            (report.text_encoder_skipped if is_te and text_encoder is None else report.skipped).append(name)
            continue
        _merge_pair(target[0], entry["down"], entry["up"], entry.get("alpha"), te_scale if is_te else scale)
        (report.applied_text_encoder if is_te else report.applied).append(target[1])
    if not report.applied and not report.applied_text_encoder and not report.text_encoder_skipped:
        raise ValueError(f"{source}: no LoRA entry matched a UNet or text-encoder layer (is it an SD1.5 LoRA?); "
                         f"first entries: {', '.join(list(sd)[:5])}")
    return report
