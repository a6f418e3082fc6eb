"""HunyuanPortrait's files, loaded once under a runtime (a loader node's output).

:func:`load_bundle` resolves every file through the :class:`~..loaders.store.ModelStore` (the official layout under
``models/portrait_animation/hunyuan_portrait/``, the names other packs use, the Hugging Face cache; a download only
when asked), loads each network strictly through its loader and registers it with the runtime (ComfyUI's model
management inside ComfyUI). The generation networks run in the chosen dtype (fp16 as released, by default where the
device computes it); the motion networks stay in float32 as in the original; the YOLOv5-face TorchScript detector is
managed like the networks; ArcFace runs in onnxruntime.

Optional per-root overrides (small stand-in models, a fine-tune with another width): ``unet/config.json`` and
``scheduler/scheduler_config.json`` beside ``hyportrait/``, and ``<vae file stem>.config.json`` beside the VAE file.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..loaders.manifest import load_manifest
from ..loaders.store import ModelStore, ProgressFn
from ..runtime.base import ModelHandle, Runtime
from .pipeline import PortraitModels

log = logging.getLogger(__name__)

FAMILY = "hunyuan_portrait"
AUTO_DTYPES = (torch.float16, torch.float32)  # what ``auto`` picks from: fp16 (the official inference) or fp32


def bundle_groups(arcface: bool) -> list[str]:
    return ["core", "motion", "face"] + (["arcface"] if arcface else [])


@dataclass
class PortraitBundle:
    """Every HunyuanPortrait model, each a runtime handle (ArcFace is an onnxruntime session)."""

    runtime: Runtime
    dtype: torch.dtype
    unet: ModelHandle
    vae: ModelHandle
    dino: ModelHandle
    image_proj: ModelHandle
    pose_guider: ModelHandle
    expression: ModelHandle
    head_pose: ModelHandle
    refiner: ModelHandle
    detector_net: ModelHandle
    scheduler_config: object
    arcface: object | None = None          # identity.ArcFaceEncoder
    notes: list[str] = field(default_factory=list)

    @property
    def appearance_models(self) -> list[ModelHandle]:
        return [self.dino, self.image_proj]

    @property
    def motion_models(self) -> list[ModelHandle]:
        return [self.expression, self.head_pose, self.refiner]

    @property
    def sampling_models(self) -> list[ModelHandle]:
        return [self.unet, self.vae, self.pose_guider]

    def models(self) -> PortraitModels:
        """The plain modules (wherever the runtime has put them) for the core functions of :mod:`.pipeline`."""
        return PortraitModels(unet=self.unet.module, vae=self.vae.module, scheduler_config=self.scheduler_config,
                              dino=self.dino.module, image_proj=self.image_proj.module,
                              pose_guider=self.pose_guider.module, expression=self.expression.module,
                              head_pose=self.head_pose.module, refiner=self.refiner.module)

    def detector(self):
        """The YOLOv5-face detector on the runtime's device (loads it there first): a ``Detector`` callable."""
        from ..face.yolo_face import YoloFaceDetector

        self.runtime.load([self.detector_net])
        return YoloFaceDetector(self.detector_net.module, device=self.detector_net.device)


def portrait_dtype(runtime: Runtime, requested=None) -> torch.dtype:
    """An explicit choice wins; ``auto`` is fp16 where the runtime's device computes it (the released precision),
    else what the runtime prefers (fp32 on the CPU)."""
    from ..runtime.base import parse_dtype

    chosen = parse_dtype(requested)
    return chosen if chosen is not None else runtime.default_dtype("diffusion", AUTO_DTYPES)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_bundle(runtime: Runtime, store: ModelStore | None = None, dtype=None, download: bool = False,
                arcface: bool = True, progress: ProgressFn | None = None) -> PortraitBundle:
    """Load HunyuanPortrait (missing files: the store's error naming each file and where it goes, or a download)."""
    from ..motion.hunyuan import loading as motion_loading
    from . import appearance_loading
    from . import pose_guider as hp_pose_guider
    from . import scheduler as hp_scheduler
    from . import unet as hp_unet
    from . import vae as hp_vae

    store = store or ModelStore.default()
    manifest = load_manifest(FAMILY)
    located = store.ensure_located(manifest.select(groups=bundle_groups(arcface)), download=download,
                                   progress=progress)
    paths = {file_id: loc.path for file_id, loc in located.items()}
    dt = portrait_dtype(runtime, dtype)
    root = paths["unet"].parent.parent                      # <root>/hyportrait/unet.pth
    unet_config = root / "unet" if (root / "unet" / "config.json").is_file() else None
    scheduler_dir = root / "scheduler" if (root / "scheduler" / "scheduler_config.json").is_file() else None
    vae_path = paths["svd_xt_vae"]
    vae_config = _json(vae_path.with_name(vae_path.name.split(".")[0] + ".config.json"))
    manage = runtime.manage
    fp32 = torch.float32
    bundle = PortraitBundle(
        runtime=runtime, dtype=dt,
        unet=manage("hunyuan_portrait.unet", hp_unet.load_unet(paths["unet"], config=unet_config, dtype=dt), dt),
        vae=manage("hunyuan_portrait.vae", hp_vae.load_vae(vae_path, config=vae_config, dtype=dt), dt),
        dino=manage("hunyuan_portrait.dino", appearance_loading.load_dino(paths["dino"], dtype=dt), dt),
        image_proj=manage("hunyuan_portrait.image_proj",
                          appearance_loading.load_image_proj(paths["image_proj"], dtype=dt), dt),
        pose_guider=manage("hunyuan_portrait.pose_guider",
                           hp_pose_guider.load_pose_guider(paths["pose_guider"], dtype=dt), dt),
        expression=manage("hunyuan_portrait.expression",
                          motion_loading.load_expression_encoder(paths["expression"], fp32), fp32),
        head_pose=manage("hunyuan_portrait.head_pose", motion_loading.load_head_pose(paths["headpose"], fp32), fp32),
        refiner=manage("hunyuan_portrait.motion_refiner",
                       motion_loading.load_motion_refiner(paths["motion_proj"], fp32), fp32),
        detector_net=manage("hunyuan_portrait.yoloface", _load_detector(paths["yoloface_v5m"]), fp32),
        scheduler_config=hp_scheduler.scheduler_config(scheduler_dir),
    )
    if arcface:
        from .identity import ArcFaceEncoder

        bundle.arcface = ArcFaceEncoder(paths["arcface"], device=_onnx_device(runtime))
    else:
        bundle.notes.append("ArcFace not loaded: the identity embedding is a zero vector (as the original with "
                            "use_arcface off) and no identity score is computed")
    bundle.notes[:0] = report_lines(located, bundle)
    return bundle


def _load_detector(path: Path) -> torch.nn.Module:
    from ..face.yolo_face import load_torchscript

    return load_torchscript(path)


def _onnx_device(runtime: Runtime) -> Optional[str]:
    return runtime.device.type if runtime.device.type == "cuda" else "cpu"


def report_lines(located: dict, bundle: PortraitBundle) -> list[str]:
    """Where each file was found when not at its canonical place, and what loading converted or dropped."""
    lines = [f"{file_id}: {loc.path} ({loc.how}: {loc.reason})" for file_id, loc in sorted(located.items())
             if getattr(loc, "how", "canonical") != "canonical"]
    for handle in (bundle.unet, bundle.vae, bundle.dino, bundle.image_proj, bundle.pose_guider, bundle.expression,
                   bundle.head_pose, bundle.refiner):
        report = getattr(handle.module, "load_report", None)
        if report is not None and (len(report.lines()) > 1 or report.file_dtype):
            lines += report.lines()
    return lines


__all__ = ["FAMILY", "PortraitBundle", "bundle_groups", "load_bundle", "portrait_dtype", "report_lines"]
