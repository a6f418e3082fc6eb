"""Loading the released MEMO folders (``memoavatar/memo``) with strict key checks.

Each folder holds ``config.json`` + ``diffusion_pytorch_model.safetensors`` (fp32; the audit in
``specs/real_files.md`` confirms the key sets equal the classes'). Every network is built on the meta device from its
config and filled under the released-folder policy (:data:`POLICY`; assigned, so the weights are held once), each
tensor cast to the requested dtype as it is read. A missing or mis-shaped key raises
:class:`~..loaders.checkpoint.CheckpointKeyError` naming the file and the keys; an extra key is logged as a warning
and ignored (diffusers, which MEMO used, does the same); a bad config raises ``ValueError`` naming the folder. The report is the module's ``load_report``.

Folders: ``reference_net``, ``diffusion_net``, ``image_proj``, ``audio_proj``, ``misc/audio_emotion_classifier``.

Temporal positional encoding: its ``pos_encoder.pe`` buffers are in the checkpoint iff it was trained with it, so the
checkpoint decides (presence and ``max_len``) when it disagrees with ``motion_module_kwargs``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..loaders.checkpoint import find_weights, load_with_policy, read_diffusers_folder
from ..loaders.policy import RELEASED_FOLDER

POLICY = RELEASED_FOLDER.with_(name="MEMO released folder")

log = logging.getLogger(__name__)

FOLDERS = {
    "reference_net": "reference_net",
    "diffusion_net": "diffusion_net",
    "image_proj": "image_proj",
    "audio_proj": "audio_proj",
    "emotion_classifier": "misc/audio_emotion_classifier",
}


def _read(folder: str | Path, dtype: torch.dtype | None = None) -> tuple[dict, dict, str]:
    """``(config, state dict, source)``; with ``dtype`` each floating tensor is cast as it is read (host memory peaks at
    about the cast model's size, not the fp32 file's plus the cast copy)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MEMO model folder not found: {folder}")
    config, sd = read_diffusers_folder(folder, dtype=dtype)
    source = ", ".join(str(p) for p in find_weights(folder))
    return config, sd, source


def _build(folder: Path, factory: Callable[[], torch.nn.Module], sd: dict, source: str,
           dtype: torch.dtype | None) -> torch.nn.Module:
    module = load_with_policy(factory, sd, POLICY.with_(name=f"MEMO {folder.name}"), source=source, dtype=dtype)
    return module.eval().requires_grad_(False)


def _config_error(folder, e: Exception) -> ValueError:
    return ValueError(f"{Path(folder) / 'config.json'}: {e}")


def reference_net_config(config: dict):
    from .reference_net import ReferenceNetConfig

    return ReferenceNetConfig.from_dict(config)


def diffusion_net_config(config: dict, state_dict: dict | None = None):
    """The Diffusion Net config, with the temporal positional encoding reconciled with the checkpoint's keys."""
    from .diffusion_net import DiffusionNetConfig

    config = dict(config)
    if state_dict is not None:
        mm = dict(config.get("motion_module_kwargs") or {})
        pe = [k for k in state_dict if k.endswith("pos_encoder.pe")]
        has_pe = bool(pe)
        max_len = int(state_dict[pe[0]].shape[1]) if has_pe else None
        if has_pe != bool(mm.get("temporal_position_encoding", False)) or (
                has_pe and max_len != mm.get("temporal_position_encoding_max_len", 24)):
            log.info("diffusion_net: temporal positional encoding taken from the checkpoint (%s)",
                     f"on, max_len {max_len}" if has_pe else "off")
            mm["temporal_position_encoding"] = has_pe
            if has_pe:
                mm["temporal_position_encoding_max_len"] = max_len
            config["motion_module_kwargs"] = mm
    return DiffusionNetConfig.from_dict(config)


def load_reference_net(folder: str | Path, dtype: torch.dtype | None = None):
    from .reference_net import ReferenceNet

    config, sd, source = _read(folder, dtype)
    try:
        cfg = reference_net_config(config)
    except ValueError as e:
        raise _config_error(folder, e) from e
    return _build(Path(folder), lambda: ReferenceNet(cfg), sd, source, dtype)


def load_diffusion_net(folder: str | Path, dtype: torch.dtype | None = None):
    from .diffusion_net import DiffusionNet

    config, sd, source = _read(folder, dtype)
    try:
        cfg = diffusion_net_config(config, sd)
    except ValueError as e:
        raise _config_error(folder, e) from e
    return _build(Path(folder), lambda: DiffusionNet(cfg), sd, source, dtype)


def load_image_proj(folder: str | Path, dtype: torch.dtype | None = None):
    """Sizes come from the weights (the released config.json names only the class)."""
    from .projections import ImageProj, ImageProjConfig

    _, sd, source = _read(folder, dtype)
    token_dim = sd["norm.weight"].shape[0]
    cfg = ImageProjConfig(embedding_dim=sd["proj.weight"].shape[1], tokens=sd["proj.weight"].shape[0] // token_dim,
                          token_dim=token_dim)
    return _build(Path(folder), lambda: ImageProj(cfg), sd, source, dtype)


def load_audio_proj(folder: str | Path, dtype: torch.dtype | None = torch.float32):
    """The official pipeline runs audio_proj in float32 (and casts its output afterwards). Sizes come from the
    weights: the input is the flattened (window, layer, channel) block, whatever its factors."""
    from .projections import AudioProj, AudioProjConfig

    _, sd, source = _read(folder, dtype)
    cfg = AudioProjConfig()
    inter, flat = sd["proj1.weight"].shape
    token_dim = sd["norm.weight"].shape[0]
    if flat != cfg.input_dim:
        cfg = AudioProjConfig(window=1, layers=1, channels=flat)
    cfg.intermediate_dim, cfg.token_dim = inter, token_dim
    cfg.tokens = sd["proj3.weight"].shape[0] // token_dim
    return _build(Path(folder), lambda: AudioProj(cfg), sd, source, dtype)


def load_emotion_classifier(folder: str | Path, dtype: torch.dtype | None = None):
    from .emotion_classifier import EmotionClassifier

    _, sd, source = _read(folder, dtype)
    return _build(Path(folder), EmotionClassifier, sd, source, dtype)


LOADERS = {
    "reference_net": load_reference_net,
    "diffusion_net": load_diffusion_net,
    "image_proj": load_image_proj,
    "audio_proj": load_audio_proj,
    "emotion_classifier": load_emotion_classifier,
}


@dataclass
class MemoModels:
    reference_net: torch.nn.Module | None = None
    diffusion_net: torch.nn.Module | None = None
    image_proj: torch.nn.Module | None = None
    audio_proj: torch.nn.Module | None = None
    emotion_classifier: torch.nn.Module | None = None


def load_memo(root: str | Path, dtype: torch.dtype | None = None, parts=tuple(FOLDERS),
              audio_proj_dtype: torch.dtype | None = torch.float32) -> MemoModels:
    """Load the requested parts of a ``memoavatar/memo`` download rooted at ``root`` (its own sub-folder layout)."""
    root = Path(root)
    models = MemoModels()
    for part in parts:
        if part not in FOLDERS:
            raise KeyError(f"unknown MEMO part {part!r} (known: {', '.join(FOLDERS)})")
        part_dtype = audio_proj_dtype if part == "audio_proj" else dtype
        setattr(models, part, LOADERS[part](root / FOLDERS[part], dtype=part_dtype))
    return models
