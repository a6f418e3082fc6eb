"""PD-FGC expression encoder (``FanEncoder`` of ``songkey/pd_fgc_motion``) as a plain torch module.

Architecture (module names are the released checkpoint's keys):

* ``model``: a FAN trunk. ``conv1`` 7x7/2 (3 -> 64) + ``bn1`` + ReLU, ``conv2`` ConvBlock(64 -> 128) then 2x2 max
  pool, ``conv3`` ConvBlock(128 -> 128), ``conv4`` ConvBlock(128 -> 256), one hourglass ``m0`` (depth 4, 256
  channels), ``top_m_0`` ConvBlock, ``conv_last0`` 1x1 + ``bn_end0``, ReLU, ``l0`` 1x1 (256 -> 68 heatmaps),
  ``bn5`` + ReLU, ``conv6`` 3x3/2 (68 -> 1), flatten (28 x 28 for a 224 input), ReLU, ``fc`` (784 -> 512).
* heads on the 512 features: ``to_eye`` -> ``eye_embed`` (6), ``to_emo`` -> ``emo_embed`` (30), ``to_mouth`` (512);
  each ``to_*`` is Linear, ReLU, BatchNorm1d, Linear; each ``*_embed`` is ReLU, Linear. ``mouth_embed`` exists in the
  checkpoint but the output uses ``to_mouth`` directly.
* output: ``cat[eye 6, emo 30, mouth 512]`` = 548 per image.

A ConvBlock: ``bn1``-ReLU-``conv1`` (3x3, out/2), ``bn2``-ReLU-``conv2`` (out/4), ``bn3``-ReLU-``conv3`` (out/4),
concatenated (out channels) plus the input (through ``downsample`` = BN, ReLU, 1x1 conv when the widths differ).
An hourglass level: upper branch ``b1_<l>``; lower branch 2x2 max pool, ``b2_<l>``, the next level (or
``b2_plus_1`` at the bottom), ``b3_<l>``, bilinear upsampling (align_corners False) to the upper size; sum.

Input: ``(N, 3, 224, 224)`` float RGB in [-1, 1] (the 5-point-aligned face, :func:`.geometry.pdfgc_warp`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

EYE_DIM = 6
EMO_DIM = 30
MOUTH_DIM = 512
CODE_DIM = EYE_DIM + EMO_DIM + MOUTH_DIM  # 548
INPUT_SIZE = 224
HOURGLASS_DEPTH = 4


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation residual block whose output concatenates three 3x3 stages (widths out/2, out/4, out/4)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half, quarter = cout // 2, cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        self.downsample = None
        if cin != cout:
            self.downsample = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True),
                                            nn.Conv2d(cin, cout, kernel_size=1, stride=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(F.relu(self.bn1(x)))
        b = self.conv2(F.relu(self.bn2(a)))
        c = self.conv3(F.relu(self.bn3(b)))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.cat((a, b, c), 1) + skip


class HourGlass(nn.Module):
    """FAN hourglass of ``depth`` levels on ``features`` channels (blocks named ``b1_<l>``, ``b2_<l>``, ``b3_<l>``,
    ``b2_plus_1``)."""

    def __init__(self, depth: int = HOURGLASS_DEPTH, features: int = 256):
        super().__init__()
        self.depth = depth
        self.dropout = nn.Dropout(0.5)  # identity in eval mode (kept for fidelity)
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
        self.add_module("b2_plus_1", ConvBlock(features, features))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self.dropout(self._modules[f"b1_{level}"](x))
        lower = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        lower = self.level(level - 1, lower) if level > 1 else self._modules["b2_plus_1"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        return upper + F.interpolate(lower, size=upper.shape[2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.level(self.depth, x)


class FanTrunk(nn.Module):
    """The FAN feature extractor (``model.*`` in the checkpoint): image -> 512 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.add_module("m0", HourGlass(HOURGLASS_DEPTH, 256))
        self.add_module("top_m_0", ConvBlock(256, 256))
        self.add_module("conv_last0", nn.Conv2d(256, 256, kernel_size=1, stride=1, padding=0))
        self.add_module("l0", nn.Conv2d(256, 68, kernel_size=1, stride=1, padding=0))
        self.add_module("bn_end0", nn.BatchNorm2d(256))
        self.conv6 = nn.Conv2d(68, 1, 3, 2, 1)
        self.fc = nn.Linear(28 * 28, 512)
        self.bn5 = nn.BatchNorm2d(68)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self._modules["top_m_0"](self._modules["m0"](x))
        x = self._modules["bn_end0"](self._modules["conv_last0"](x))
        heat = self._modules["l0"](F.relu(x))
        x = self.conv6(F.relu(self.bn5(heat)))
        x = F.relu(x.reshape(-1, x.shape[-2] * x.shape[-1]))
        return self.fc(x)


def _head(dim: int = 512) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim), nn.Linear(dim, dim))


class FanEncoder(nn.Module):
    """PD-FGC motion encoder: ``(N, 3, 224, 224)`` RGB in [-1, 1] -> ``(N, 548)`` = [eye 6 | emotion 30 | mouth 512].
    ``pose_dim``/``eye_dim`` are the released config's values (6, 6)."""

    def __init__(self, pose_dim: int = 6, eye_dim: int = EYE_DIM):
        super().__init__()
        self.model = FanTrunk()
        self.to_mouth = _head()
        self.mouth_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, 512 - pose_dim - eye_dim))  # unused by forward
        self.to_eye = _head()
        self.eye_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, eye_dim))
        self.to_emo = _head()
        self.emo_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, EMO_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.model(x)
        mouth = self.to_mouth(feat)
        eye = self.eye_embed(self.to_eye(feat))
        emo = self.emo_embed(self.to_emo(feat))
        return torch.cat([eye, emo, mouth], dim=1)


def _config_kwargs(config: dict) -> dict:
    return {k: int(config[k]) for k in ("pose_dim", "eye_dim") if k in config}


def load_policy():
    """The loading rules of ``pd_fgc_motion``: BatchNorm counters may be absent (some exports omit them; inference does
    not use them); the pose heads ``to_headpose.*`` / ``headpose_embed.*``, commented out of the original class, are
    dropped with a log line if a file saved before their removal carries them."""
    from ...loaders.policy import RELEASED_FOLDER, prefix_drop

    return RELEASED_FOLDER.with_(name="pd_fgc_motion (FanEncoder)",
                                 drops=(prefix_drop("to_headpose.", "unused head pose branch"),
                                        prefix_drop("headpose_embed.", "unused head pose branch")))


def load_fan_encoder(folder: str | Path, dtype: Optional[torch.dtype] = None,
                     device: Optional[torch.device | str] = None) -> FanEncoder:
    """The released encoder from its folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) under
    :func:`load_policy`, in eval mode: every weight must be there with its shape; the report is ``load_report``.

    ``device``: where it runs (None: the CPU; "auto": the runtime's device, e.g. ComfyUI's GPU); :func:`encode_faces`
    feeds it there."""
    from ...loaders.checkpoint import load_with_policy, read_diffusers_folder

    config, sd = read_diffusers_folder(folder, dtype=dtype)
    kwargs = _config_kwargs(config)
    enc = load_with_policy(lambda: FanEncoder(**kwargs), sd, load_policy(), source=str(folder), dtype=dtype)
    if isinstance(device, str) and device == "auto":
        from ...runtime.onnx import runtime_device

        device = runtime_device()
    if device is not None:
        enc = enc.to(device)
    return enc.eval().requires_grad_(False)


def encoder_folder(store=None, download: bool = False) -> Path:
    """The ``pd_fgc_motion`` folder from the model store (manifest group ``expression_pdfgc``)."""
    from ...loaders.manifest import load_manifest
    from ...loaders.store import ModelStore

    files = load_manifest("hellomeme").select(groups=["expression_pdfgc"])
    found = (store or ModelStore.default()).ensure(files, download=download)
    return Path(found["pd_fgc_motion"]).parent


@torch.no_grad()
def encode_faces(encoder: FanEncoder, faces: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``(F, 3, 224, 224)`` aligned faces in [-1, 1] -> ``(1, F, 548)`` float32 on the CPU."""
    p = next(encoder.parameters())
    out = [encoder(faces[i:i + batch_size].to(p.device, p.dtype)).float().cpu()
           for i in range(0, faces.shape[0], batch_size)]
    return torch.cat(out, dim=0)[None]


@torch.no_grad()
def negative_code(encoder: FanEncoder, size: int = INPUT_SIZE) -> torch.Tensor:
    """The CFG-negative expression of v1/v2: the encoder's output for an all -1 face, ``(1, 1, 548)`` float32."""
    p = next(encoder.parameters())
    return encoder(-torch.ones(1, 3, size, size, device=p.device, dtype=p.dtype)).float().cpu()[None]
