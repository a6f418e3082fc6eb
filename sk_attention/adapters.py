"""Containers whose state dicts are the released HelloMeme checkpoint files, and their loader.

Every released HelloMeme module is a diffusers-style folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
whose ``_class_name`` names the original class:

=====================  ==============================================  =============================================
``_class_name``        repositories                                    module here
=====================  ==============================================  =============================================
HMReferenceAdapter     songkey/hm_reference (``version`` v1),          :class:`ReferenceAdapter` (variant ``v1``;
                       songkey/hm2_reference (any other version)       v1 adds down + mid blocks)
HM3ReferenceAdapter    songkey/hm3_reference, songkey/hm4_reference    :class:`ReferenceAdapter` (variant ``v3``)
HM5ReferenceAdapter    songkey/hm5_reference                           :class:`ReferenceAdapter` (variant ``v5``)
HM5bReferenceAdapter   songkey/hm5b_reference, songkey/hm5c_reference  :class:`ReferenceAdapter` (variant ``v5b``)
HM3MotionAdapter       songkey/hm3_motion, songkey/hm4_motion          :class:`MotionAdapter` (variant ``v3``)
HM5MotionAdapter       songkey/hm5_motion                              :class:`MotionAdapter` (variant ``v5``)
MotionAdapter          songkey/hm_animatediff_frame12,                 diffusers ``MotionAdapter`` (AnimateDiff, see
                       hm2_animatediff_frame12, hm3_animatediff,       :func:`load_animatediff_adapter`)
                       hm4_animatediff
HMControlNet           songkey/hm_control                              :class:`~.control.KnittedControlNet` (v1,
HMControlNet2          songkey/hm_control2                             v2 and v3 nets: one class, the released
HMV2ControlNet         songkey/hm2_control                             class fixes the expression input and the
HMV2ControlNet2        songkey/hm2_control2                            output names, see
HMV3ControlNet         songkey/hm3_control_mix                         :data:`~.control.RELEASED_CONTROL_NETS`)
HMControlNetBase       songkey/hm_control_base                         :class:`~.control.ControlEncoder` (stored
                                                                       position tables)
HM4SD15ControlProj     songkey/hm4_control_proj                        :class:`~.control.ControlProjector` (plain
                                                                       convs, ``attention=False``)
HM5ControlNetBase      songkey/hm5_control_base                        :class:`~.control.ControlEncoder`
HM5SD15ControlProj     songkey/hm5_control_proj, hm5c_control_proj     :class:`~.control.ControlProjector`
=====================  ==============================================  =============================================

:func:`load_hellomeme_module` reads such a folder, builds the module on the meta device and loads the weights
strictly (every key, every shape); the control networks, whose released ``config.json`` holds no widths, are sized
from the checkpoint's tensor shapes where config.json is silent (released files: the class defaults; reduced stand-in
models: their own widths, same key names). The adapters are containers: the denoiser calls their blocks,
``reference_modules_up[j](hidden, ref, num_frames)`` before up block ``j + first_up_block`` (v1/v2: also
``reference_modules_down[i]`` after down block i and ``reference_modules_mid`` after the mid block) and
``motion_down[i]`` / ``motion_up[i]`` ``(hidden, pad, temb, num_frames)`` after down block i / before up block i.
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

from .control import (RELEASED_CONTROL_NETS, ControlEncoder, ControlEncoderConfig, ControlProjector,
                      KnittedControlNet, KnittedControlNetConfig, control_encoder_widths, control_net_widths,
                      control_projections)
from .keyframe_motion import AnchoredTemporalAttention
from .knitting import KnittedReferenceAttention, KnittedReferenceModule
from .motion import AnchoredMotionModule

SD15_DOWN_CHANNELS = (320, 640, 1280, 1280)  # output channels of the SD1.5 UNet down blocks
SD15_UP_CHANNELS = (1280, 1280, 1280, 640)  # input channels of the SD1.5 UNet up blocks (after the skip concat)

REFERENCE_VARIANTS = ("v1", "v3", "v5", "v5b")
STORED_TABLE_LENGTH = 128  # v1/v3 reference blocks: positions of the stored table pos_embed.pe (2W, 2H <= 128)


def _per_block(heads: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (heads,) * n if isinstance(heads, int) else tuple(heads)


@dataclass
class ReferenceAdapterConfig:
    """Fields of the released ``config.json`` plus the block variant (given by ``_class_name``).

    ``block_down_channels`` and ``use_3d`` are stored in the released v3-v5 configs but unused there.
    ``column_pe_from_row_length`` (v5 only, not a weight): see :class:`~.knitting.KnittedReferenceAttention`.
    ``down_and_mid`` (v1, ``HMReferenceAdapter`` with ``version`` 'v1'): also ``reference_modules_down[i]``
    (C = ``block_down_channels[i]``) and ``reference_modules_mid`` (C = ``block_down_channels[-1]``).
    ``num_attention_heads``: one value, or one per down block (then the mid block takes the last);
    ``up_attention_heads``: per up module (None: ``num_attention_heads`` when it is one value).
    ``first_up_block``: the UNet up block served by ``reference_modules_up[0]`` (1 for v1/v2, whose up block 0 has
    no cross-attention and no reference).
    """

    block_down_channels: tuple[int, ...] = SD15_DOWN_CHANNELS
    block_up_channels: tuple[int, ...] = SD15_UP_CHANNELS
    num_attention_heads: int | tuple[int, ...] = 8
    use_3d: bool = False
    variant: str = "v5"
    column_pe_from_row_length: bool = True
    down_and_mid: bool = False
    up_attention_heads: Optional[tuple[int, ...]] = None
    first_up_block: int = 0


class ReferenceAdapter(nn.Module):
    """``reference_modules_up[j]`` serves UNet up block ``j + first_up_block`` (C = ``block_up_channels[j]``).

    variant ``v1`` (``HMReferenceAdapter``, v1/v2 files) and ``v3`` (``HM3ReferenceAdapter``, v3/v4 files):
    :class:`~.knitting.KnittedReferenceAttention` with the stored 128-position table (released
    ``SKReferenceAttention`` / ``SKReferenceAttentionV3``, the same arithmetic); ``v5``: the same class with
    computed positions (``SKReferenceAttentionV5``); ``v5b`` (v5b and v5c files):
    :class:`~.knitting.KnittedReferenceModule` (``STKReferenceModule``). With ``down_and_mid`` (v1 files) the
    adapter also holds ``reference_modules_down[i]`` (after down block i; the last is never used by the original
    denoiser) and ``reference_modules_mid`` (after the mid block).
    """

    def __init__(self, config: ReferenceAdapterConfig | None = None, **overrides):
        super().__init__()
        config = config or ReferenceAdapterConfig(**overrides)
        if config.variant not in REFERENCE_VARIANTS:
            raise ValueError(f"unknown reference adapter variant {config.variant!r} (known: {REFERENCE_VARIANTS})")
        if config.down_and_mid and config.variant != "v1":
            raise ValueError("down and mid reference blocks exist only in the v1 adapter (HMReferenceAdapter)")
        self.config = config
        self.first_up_block = config.first_up_block
        up_heads = config.up_attention_heads or _per_block(config.num_attention_heads, len(config.block_up_channels))
        blocks = [self._block(c, h) for c, h in zip(config.block_up_channels, up_heads, strict=True)]
        self.reference_modules_up = nn.ModuleList(blocks)
        if config.down_and_mid:
            down_heads = _per_block(config.num_attention_heads, len(config.block_down_channels))
            self.reference_modules_down = nn.ModuleList(
                [self._block(c, h) for c, h in zip(config.block_down_channels, down_heads, strict=True)])
            self.reference_modules_mid = self._block(config.block_down_channels[-1], down_heads[-1])

    def _block(self, channels: int, heads: int) -> nn.Module:
        variant = self.config.variant
        if variant in ("v1", "v3"):
            return KnittedReferenceAttention(channels, heads, position_table_length=STORED_TABLE_LENGTH,
                                             unused_time_embed_dim=None)
        if variant == "v5":
            return KnittedReferenceAttention(channels, heads,
                                             column_pe_from_row_length=self.config.column_pe_from_row_length)
        return KnittedReferenceModule(channels, heads)

    def use_row_length_column_positions(self, enabled: bool = True) -> "ReferenceAdapter":
        """v5: True reproduces the released column-position quirk (square maps only); False lifts it."""
        self.config.column_pe_from_row_length = enabled
        for block in self.reference_modules_up:
            if isinstance(block, KnittedReferenceAttention):
                block.column_pe_from_row_length = enabled
        return self


MOTION_VARIANTS = ("v3", "v5")


@dataclass
class MotionAdapterConfig:
    """Fields of the released ``HM3MotionAdapter`` / ``HM5MotionAdapter`` ``config.json`` plus the block variant
    (given by ``_class_name``). ``use_3d`` (v3 configs) is stored but unused. ``time_embed_dim`` (v3 blocks, not a
    config field): width of the UNet time embedding they project (SD1.5: 1280; the loader reads it from the
    checkpoint's ``time_emb_proj`` shape, so reduced stand-in models fit their UNet)."""

    block_down_channels: tuple[int, ...] = SD15_DOWN_CHANNELS
    block_up_channels: tuple[int, ...] = SD15_UP_CHANNELS
    num_attention_heads: int = 8
    use_3d: bool = True
    variant: str = "v5"
    time_embed_dim: int = 1280


class MotionAdapter(nn.Module):
    """``motion_down[i]`` (after down block i) and ``motion_up[i]`` (before up block i, after the reference block).

    variant ``v5``: :class:`~.motion.AnchoredMotionModule` (released ``SKMotionModuleV5``; pads optional);
    ``v3`` (v3/v4 files): :class:`~.keyframe_motion.AnchoredTemporalAttention` (``SKMotionModule``; pads required,
    reads the time embedding). Every block is called ``(hidden (B*F, C, H, W), pads (B, C, 2, H, W) or None,
    temb (B*F, 1280), num_frames)``.
    """

    def __init__(self, config: MotionAdapterConfig | None = None, **overrides):
        super().__init__()
        config = config or MotionAdapterConfig(**overrides)
        if config.variant not in MOTION_VARIANTS:
            raise ValueError(f"unknown motion adapter variant {config.variant!r} (known: {MOTION_VARIANTS})")
        self.config = config
        heads = config.num_attention_heads
        if config.variant == "v3":
            def block(c, h):
                return AnchoredTemporalAttention(c, h, time_embed_dim=config.time_embed_dim)
        else:
            block = AnchoredMotionModule
        self.motion_down = nn.ModuleList([block(c, heads) for c in config.block_down_channels])
        self.motion_up = nn.ModuleList([block(c, heads) for c in config.block_up_channels])

    @property
    def needs_pads(self) -> bool:
        """v3/v4 blocks have no path without keyframe pads."""
        return self.config.variant == "v3"


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


def _hm_reference(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    """``HMReferenceAdapter`` (v1/v2): fields ``block_out_channels``, ``down_block_types``, ``up_block_types``,
    ``num_attention_heads``, ``version`` ('v1' adds the down and mid blocks). Up module j serves up block j + 1 with
    that block's input width (the previous up block's output, ``reversed(block_out_channels)[j]``)."""
    known = ("block_out_channels", "down_block_types", "up_block_types", "num_attention_heads", "version")
    for key in config:
        if not key.startswith("_") and key not in known:
            warnings.warn(f"reference adapter: ignoring unknown config field {key!r}")
    out = tuple(config.get("block_out_channels", SD15_DOWN_CHANNELS))
    n_down = len(config.get("down_block_types", out))
    n_up = len(config.get("up_block_types", out))
    heads = _per_block(config.get("num_attention_heads", 8), n_down)
    reversed_out, reversed_heads = out[::-1], heads[::-1]
    return ReferenceAdapter(ReferenceAdapterConfig(
        block_down_channels=out[:n_down], block_up_channels=tuple(reversed_out[j] for j in range(n_up - 1)),
        num_attention_heads=heads, up_attention_heads=tuple(reversed_heads[j + 1] for j in range(n_up - 1)),
        variant="v1", down_and_mid=config.get("version", "v1") == "v1", first_up_block=1))


def _motion(variant: str) -> Callable[[dict, dict, Shapes], nn.Module]:
    def build(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
        # v3 blocks: the time-embedding width from the checkpoint (released: 1280, the class default)
        proj = (shapes or {}).get("motion_down.0.time_emb_proj.weight") if variant == "v3" else None
        fixed = {"time_embed_dim": int(proj[1])} if proj is not None else {}
        if "time_embed_dim" in config:
            warnings.warn("motion adapter: ignoring config field 'time_embed_dim' (read from the weights)")
            config = {k: v for k, v in config.items() if k != "time_embed_dim"}
        return MotionAdapter(_dataclass_from(MotionAdapterConfig, config, "motion adapter", variant=variant,
                                             **fixed))
    return build


def _animatediff(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    """diffusers ``MotionAdapter`` (AnimateDiff temporal modules of the v1-v4 video UNet) from its config fields."""
    import inspect

    from diffusers import MotionAdapter as AnimateDiffMotionAdapter

    accepted = set(inspect.signature(AnimateDiffMotionAdapter.__init__).parameters) - {"self"}
    fields = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in accepted:
            warnings.warn(f"AnimateDiff motion adapter: ignoring unknown config field {key!r}")
            continue
        fields[key] = tuple(value) if isinstance(value, list) else value
    return AnimateDiffMotionAdapter(**fields)


def _control_encoder(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    # widths: config.json fields first, then the checkpoint's shapes, then the released class defaults
    inferred = control_encoder_widths(shapes) if shapes else {}
    return ControlEncoder(_dataclass_from(ControlEncoderConfig, {**inferred, **config}, "control encoder",
                                          position_table_lengths=None))


def _control_encoder_v4(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    # HMControlNetBase: the v5 arithmetic with the U-Net's stored position tables (released: 512 / 1024 positions)
    inferred = {"position_table_lengths": (512, 1024), **(control_encoder_widths(shapes) if shapes else {})}
    return ControlEncoder(_dataclass_from(ControlEncoderConfig, {**inferred, **config}, "control encoder"))


def _control_projector(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    # the released config.json has no fields; each map's widths come from its weight (released widths without one)
    return ControlProjector(control_projections(shapes))


def _control_projector_v4(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
    return ControlProjector(control_projections(shapes), attention=False)


def _control_net(class_name: str) -> Callable[[dict, dict, Shapes], nn.Module]:
    def build(config: dict, options: dict, shapes: Shapes = None) -> nn.Module:
        # v1-v3: config.json fields first (v1 holds the constructor's), then the checkpoint's shapes (v2 / v3
        # configs hold only the class name), then the class's defaults; expression and output names are the class's
        release = RELEASED_CONTROL_NETS[class_name]
        inferred = control_net_widths(shapes) if shapes else {}
        fixed = {k: release[k] for k in ("expression", "output_prefix") if k in release}
        fixed["outputs_from_bottom"] = release.get("outputs_from_bottom", False)
        return KnittedControlNet(_dataclass_from(KnittedControlNetConfig, {**release, **inferred, **config},
                                                 f"{class_name} control network", **fixed))
    return build


# settings that are not weights, accepted by every loader call and applied where they mean something
OPTIONS = ("column_pe_from_row_length",)  # v5 reference: see KnittedReferenceAttention

# released ``_class_name`` -> builder(config dict, options, shapes) of the module whose state dict is that file
RELEASED_CLASSES: dict[str, Callable[[dict, dict, Shapes], nn.Module]] = {
    "HMReferenceAdapter": _hm_reference,
    "HM3ReferenceAdapter": _reference("v3"),
    "HM5ReferenceAdapter": _reference("v5"),
    "HM5bReferenceAdapter": _reference("v5b"),
    "HM3MotionAdapter": _motion("v3"),
    "HM5MotionAdapter": _motion("v5"),
    "MotionAdapter": _animatediff,
    **{name: _control_net(name) for name in RELEASED_CONTROL_NETS},
    "HMControlNetBase": _control_encoder_v4,
    "HM4SD15ControlProj": _control_projector_v4,
    "HM5ControlNetBase": _control_encoder,
    "HM5SD15ControlProj": _control_projector,
}

# classes of the earlier releases, recognised to give a clear error
UNSUPPORTED_CLASSES: dict[str, str] = {}


def _builder(config: dict, source: str) -> Callable[[dict, dict, Shapes], nn.Module]:
    name = config.get("_class_name")
    if name in RELEASED_CLASSES:
        return RELEASED_CLASSES[name]
    if name in UNSUPPORTED_CLASSES:
        raise ValueError(f"{source}: {name} is the HelloMeme {UNSUPPORTED_CLASSES[name]}, not supported yet "
                         f"(supported: {', '.join(RELEASED_CLASSES)})")
    raise ValueError(f"{source}: config.json _class_name {name!r} is not a HelloMeme module this pack knows "
                     f"(supported: {', '.join(RELEASED_CLASSES)})")


def build_hellomeme_module(config: dict, source: str = "config", shapes: Shapes = None, **options) -> nn.Module:
    """The (untrained) module a released ``config.json`` describes; build it under ``torch.device('meta')`` to
    allocate nothing. ``options`` are non-weight settings (:data:`OPTIONS`: ``column_pe_from_row_length`` for v5
    references; ignored by the modules it does not concern).

    ``shapes`` (``{key: shape}`` of the checkpoint to be loaded) sizes the control networks, whose released
    ``config.json`` files carry no widths: ``HMControlNetBase`` / ``HM5ControlNetBase`` take the fields config.json
    leaves out from :func:`~.control.control_encoder_widths`, the v1-v3 nets from
    :func:`~.control.control_net_widths`, ``HM4SD15ControlProj`` / ``HM5SD15ControlProj`` each map's in / out
    channels from :func:`~.control.control_projections` (names unchanged). The released files give the class defaults, so this only
    matters for reduced (stand-in) models. The adapters are sized by their config.json (v3 motion blocks: the time
    embedding width from ``time_emb_proj``'s shape, SD1.5's 1280 in the released files)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown HelloMeme module option(s) {unknown} (known: {list(OPTIONS)})")
    return _builder(config, source)(config, options, shapes)


def load_hellomeme_module(folder: str | Path, dtype: torch.dtype | None = None, **options) -> nn.Module:
    """Load a released HelloMeme module folder (``config.json`` + weights; classes in :data:`RELEASED_CLASSES`) in
    eval mode.

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


def load_animatediff_adapter(folder: str | Path, dtype: torch.dtype | None = None):
    """The AnimateDiff motion adapter of HelloMeme v1-v4 video (``songkey/hm_animatediff_frame12``,
    ``hm2_animatediff_frame12``, ``hm3_animatediff``, ``hm4_animatediff``) as a diffusers ``MotionAdapter``, loaded
    strictly like every other HelloMeme folder (:func:`load_hellomeme_module`: every key and shape, the stored
    ``pe`` tables included; read in ``dtype``, else the file's: the released files are fp16).

    Insert it into an SD1.5 UNet as diffusers ``UNetMotionModel.from_unet2d(unet, adapter)`` does:
    ``down_blocks[i].motion_modules`` / ``up_blocks[i].motion_modules``.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if config_path.is_file():
        name = json.loads(config_path.read_text()).get("_class_name")
        if name != "MotionAdapter":
            raise ValueError(f"{folder}: config.json _class_name {name!r} is not an AnimateDiff MotionAdapter")
    return load_hellomeme_module(folder, dtype=dtype)
