"""Containers whose state dicts are the released HelloMeme v5 / v5b / v5c checkpoint files, and their loader.

Every released HelloMeme module is a diffusers-style folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
whose ``_class_name`` names the original class:

=====================  ==============================================  =============================================
``_class_name``        repositories                                    module here
=====================  ==============================================  =============================================
HM5ReferenceAdapter    songkey/hm5_reference                           :class:`ReferenceAdapter` (variant ``v5``)
HM5bReferenceAdapter   songkey/hm5b_reference, songkey/hm5c_reference  :class:`ReferenceAdapter` (variant ``v5b``)
HM5MotionAdapter       songkey/hm5_motion                              :class:`MotionAdapter`
HM5ControlNetBase      songkey/hm5_control_base                        :class:`~.control.ControlEncoder`
HM5SD15ControlProj     songkey/hm5_control_proj, hm5c_control_proj     :class:`~.control.ControlProjector`
=====================  ==============================================  =============================================

:func:`load_hellomeme_module` reads such a folder, builds the module on the meta device and loads the weights
strictly (every key, every shape); the control networks, whose released ``config.json`` holds no widths, are sized
from the checkpoint's tensor shapes where config.json is silent (released files: the class defaults; reduced stand-in
models: their own widths, same key names). The adapters are containers: the denoiser calls their blocks,
``reference_modules_up[i](hidden, ref, num_frames)`` before up block i and ``motion_down[i]`` / ``motion_up[i]``
``(hidden, pad, temb, num_frames)`` after down block i / before up block i.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from .control import (ControlEncoder, ControlEncoderConfig, ControlProjector, control_encoder_widths,
                      control_projections)
from .knitting import KnittedReferenceAttention, KnittedReferenceModule
from .motion import AnchoredMotionModule

SD15_DOWN_CHANNELS = (320, 640, 1280, 1280)  # output channels of the SD1.5 UNet down blocks
SD15_UP_CHANNELS = (1280, 1280, 1280, 640)  # input channels of the SD1.5 UNet up blocks (after the skip concat)

REFERENCE_VARIANTS = ("v5", "v5b")


@dataclass
class ReferenceAdapterConfig:
    """Fields of the released ``config.json`` plus the block variant (given by ``_class_name``).

    ``block_down_channels`` and ``use_3d`` are stored in the released configs but unused.
    ``column_pe_from_row_length`` (v5 only, not a weight): see :class:`~.knitting.KnittedReferenceAttention`.
    """

    block_down_channels: tuple[int, ...] = SD15_DOWN_CHANNELS
    block_up_channels: tuple[int, ...] = SD15_UP_CHANNELS
    num_attention_heads: int = 8
    use_3d: bool = False
    variant: str = "v5"
    column_pe_from_row_length: bool = True


class ReferenceAdapter(nn.Module):
    """``reference_modules_up[i]`` serves UNet up block i (C = ``block_up_channels[i]``).

    variant ``v5``: :class:`~.knitting.KnittedReferenceAttention` (released ``SKReferenceAttentionV5``);
    ``v5b`` (v5b and v5c files): :class:`~.knitting.KnittedReferenceModule` (released ``STKReferenceModule``).
    """

    def __init__(self, config: ReferenceAdapterConfig | None = None, **overrides):
        super().__init__()
        config = config or ReferenceAdapterConfig(**overrides)
        if config.variant not in REFERENCE_VARIANTS:
            raise ValueError(f"unknown reference adapter variant {config.variant!r} (known: {REFERENCE_VARIANTS})")
        self.config = config
        heads = config.num_attention_heads
        if config.variant == "v5":
            blocks = [KnittedReferenceAttention(c, heads, column_pe_from_row_length=config.column_pe_from_row_length)
                      for c in config.block_up_channels]
        else:
            blocks = [KnittedReferenceModule(c, heads) for c in config.block_up_channels]
        self.reference_modules_up = nn.ModuleList(blocks)

    def use_row_length_column_positions(self, enabled: bool = True) -> "ReferenceAdapter":
        """v5: True reproduces the released column-position quirk (square maps only); False lifts it."""
        self.config.column_pe_from_row_length = enabled
        for block in self.reference_modules_up:
            if isinstance(block, KnittedReferenceAttention):
                block.column_pe_from_row_length = enabled
        return self


@dataclass
class MotionAdapterConfig:
    """Fields of the released ``HM5MotionAdapter`` ``config.json``."""

    block_down_channels: tuple[int, ...] = SD15_DOWN_CHANNELS
    block_up_channels: tuple[int, ...] = SD15_UP_CHANNELS
    num_attention_heads: int = 8


class MotionAdapter(nn.Module):
    """``motion_down[i]`` (after down block i) and ``motion_up[i]`` (before up block i, after the reference block),
    each an :class:`~.motion.AnchoredMotionModule` (released ``SKMotionModuleV5``)."""

    def __init__(self, config: MotionAdapterConfig | None = None, **overrides):
        super().__init__()
        config = config or MotionAdapterConfig(**overrides)
        self.config = config
        heads = config.num_attention_heads
        self.motion_down = nn.ModuleList([AnchoredMotionModule(c, heads) for c in config.block_down_channels])
        self.motion_up = nn.ModuleList([AnchoredMotionModule(c, heads) for c in config.block_up_channels])


def _dataclass_from(cls, config: dict, what: str, **fixed):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in names:
            warnings.warn(f"{what}: ignoring unknown config field {key!r}")
            continue
        values[key] = tuple(value) if isinstance(value, list) else value
    values.update(fixed)
    return cls(**values)


Shapes = Optional[Mapping[str, Sequence[int]]]  # {state-dict key: tensor shape} of the file being loaded, if known


def _reference(variant: str) -> Callable[[dict, dict, Shapes], nn.Module]:
    def build(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
        return ReferenceAdapter(_dataclass_from(ReferenceAdapterConfig, config, "reference adapter", variant=variant,
                                                **options))
    return build


def _motion(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    return MotionAdapter(_dataclass_from(MotionAdapterConfig, config, "motion adapter"))


def _control_encoder(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    # widths: config.json fields first, then the checkpoint's shapes, then the released class defaults
    inferred = control_encoder_widths(shapes) if shapes else {}
    return ControlEncoder(_dataclass_from(ControlEncoderConfig, {**inferred, **config}, "control encoder"))


def _control_projector(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    # the released config.json has no fields; each map's widths come from its weight (released widths without one)
    return ControlProjector(control_projections(shapes))


# settings that are not weights, accepted by every loader call and applied where they mean something
OPTIONS = ("column_pe_from_row_length",)  # v5 reference: see KnittedReferenceAttention

# released ``_class_name`` -> builder(config dict, options, shapes) of the module whose state dict is that file
RELEASED_CLASSES: dict[str, Callable[[dict, dict, Shapes], nn.Module]] = {
    "HM5ReferenceAdapter": _reference("v5"),
    "HM5bReferenceAdapter": _reference("v5b"),
    "HM5MotionAdapter": _motion,
    "HM5ControlNetBase": _control_encoder,
    "HM5SD15ControlProj": _control_projector,
}

# classes of the earlier releases, recognised to give a clear error
UNSUPPORTED_CLASSES = {
    "HMReferenceAdapter": "v1/v2 reference adapter (hm_reference, hm2_reference)",
    "HM3ReferenceAdapter": "v3/v4 reference adapter (hm3_reference, hm4_reference)",
    "HM3MotionAdapter": "v3/v4 motion adapter (hm3_motion, hm4_motion)",
    "HMControlNet": "v1 control network (hm_control)",
    "HMControlNet2": "v1 control network (hm_control2)",
    "HMV2ControlNet": "v2 control network (hm2_control)",
    "HMV2ControlNet2": "v2 control network (hm2_control2)",
    "HMV3ControlNet": "v3 control network (hm3_control_mix)",
    "HMControlNetBase": "v4 control network (hm_control_base)",
    "HM4SD15ControlProj": "v4 control projector (hm4_control_proj)",
    "MotionAdapter": "AnimateDiff motion adapter of v1-v4 video (hm*_animatediff*)",
}


def _builder(config: dict, source: str) -> Callable[[dict, dict, Shapes], nn.Module]:
    name = config.get("_class_name")
    if name in RELEASED_CLASSES:
        return RELEASED_CLASSES[name]
    if name in UNSUPPORTED_CLASSES:
        raise ValueError(f"{source}: {name} is the HelloMeme {UNSUPPORTED_CLASSES[name]}; only the v5, v5b and v5c "
                         f"modules ({', '.join(RELEASED_CLASSES)}) are supported so far")
    raise ValueError(f"{source}: config.json _class_name {name!r} is not a HelloMeme module this pack knows "
                     f"(supported: {', '.join(RELEASED_CLASSES)})")


def build_hellomeme_module(config: dict, source: str = "config", shapes: Shapes = None, **options) -> nn.Module:
    """The (untrained) module a released ``config.json`` describes; build it under ``torch.device('meta')`` to
    allocate nothing. ``options`` are non-weight settings (:data:`OPTIONS`: ``column_pe_from_row_length`` for v5
    references; ignored by the modules it does not concern).

    ``shapes`` (``{key: shape}`` of the checkpoint to be loaded) sizes the control networks, whose released
    ``config.json`` files carry no widths: ``HM5ControlNetBase`` takes the fields config.json leaves out from
    :func:`~.control.control_encoder_widths`, ``HM5SD15ControlProj`` each map's in / out channels from
    :func:`~.control.control_projections` (names unchanged). The released files give the class defaults, so this only
    matters for reduced (stand-in) models. The adapters are sized by their config.json alone."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown HelloMeme module option(s) {unknown} (known: {list(OPTIONS)})")
    return _builder(config, source)(config, options, shapes)


def load_hellomeme_module(folder: str | Path, dtype: torch.dtype | None = None, **options) -> nn.Module:
    """Load a released HelloMeme v5/v5b/v5c folder (``config.json`` + weights) in eval mode.

    The class comes from ``config.json``'s ``_class_name`` (checked before any weight is read; ``_name_or_path`` and
    the other ``_`` bookkeeping fields are ignored, class-name-only configs take the class defaults); the module is
    built on the meta device (control networks sized by the file's tensor shapes, see :func:`build_hellomeme_module`)
    and the weights are assigned (held once) under the released-folder policy. The released files are fp16 or fp32
    depending on the repository and revision: the module keeps the file's dtype unless ``dtype`` is given. Missing or
    mis-shaped keys raise :class:`CheckpointKeyError` naming the folder; extra keys are logged and ignored. The report
    (file dtype included) is the module's ``load_report``.
    """
    from ..loaders.checkpoint import load_with_policy, read_diffusers_folder
    from ..loaders.policy import RELEASED_FOLDER

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a HelloMeme module folder: no config.json")
    config = json.loads(config_path.read_text())
    with torch.device("meta"):
        build_hellomeme_module(config, source=str(folder), **options)  # unknown class / option: fail before reading
    _, state_dict = read_diffusers_folder(folder, dtype=dtype, config=config)  # cast as read
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    policy = RELEASED_FOLDER.with_(name=f"HelloMeme {config.get('_class_name')}")
    module = load_with_policy(lambda: build_hellomeme_module(config, source=str(folder), shapes=shapes, **options),
                              state_dict, policy, source=str(folder), dtype=dtype)
    return module.eval()
