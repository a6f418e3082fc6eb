"""MEMO conditioning projections: ``image_proj`` (identity tokens) and ``audio_proj`` (audio tokens).

Both released folders carry only the class name in ``config.json``; the class defaults below define the shapes.
Keys: image_proj ``proj (3072, 512)``, ``norm``; audio_proj ``proj1 (512, 46080)``, ``proj2``, ``proj3 (24576, 512)``,
``norm``. In the official pipeline ``audio_proj`` runs in float32 (on the CPU) and its output is cast afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class ImageProjConfig:
    embedding_dim: int = 512  # raw ArcFace embedding
    tokens: int = 4
    token_dim: int = 768


class ImageProj(nn.Module):
    """Face embedding ``(B, 512)`` -> ``Linear(512, 4*768)`` -> ``(B, 4, 768)`` -> LayerNorm."""

    def __init__(self, config: ImageProjConfig | None = None):
        super().__init__()
        self.config = config = config or ImageProjConfig()
        self.proj = nn.Linear(config.embedding_dim, config.tokens * config.token_dim)
        self.norm = nn.LayerNorm(config.token_dim)

    def forward(self, face_emb: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(face_emb.to(self.proj.weight.dtype))
        return self.norm(tokens.reshape(-1, self.config.tokens, self.config.token_dim))


@dataclass
class AudioProjConfig:
    window: int = 5  # frames i-2 .. i+2
    layers: int = 12  # wav2vec2 layer outputs
    channels: int = 768
    intermediate_dim: int = 512
    tokens: int = 32
    token_dim: int = 768

    @property
    def input_dim(self) -> int:
        return self.window * self.layers * self.channels


class AudioProj(nn.Module):
    """Audio windows ``(B, F, 5, 12, 768)`` -> per frame ``Linear 46080->512, ReLU, 512->512, ReLU, 512->32*768`` ->
    ``(B, F, 32, 768)`` -> LayerNorm."""

    def __init__(self, config: AudioProjConfig | None = None):
        super().__init__()
        self.config = config = config or AudioProjConfig()
        self.proj1 = nn.Linear(config.input_dim, config.intermediate_dim)
        self.proj2 = nn.Linear(config.intermediate_dim, config.intermediate_dim)
        self.proj3 = nn.Linear(config.intermediate_dim, config.tokens * config.token_dim)
        self.norm = nn.LayerNorm(config.token_dim)

    def forward(self, audio_windows: torch.Tensor) -> torch.Tensor:
        b, f = audio_windows.shape[:2]
        x = audio_windows.reshape(b * f, -1).to(self.proj1.weight.dtype)  # flatten (window, layer, channel)
        x = F.relu(self.proj1(x))
        x = F.relu(self.proj2(x))
        tokens = self.proj3(x).reshape(b * f, self.config.tokens, self.config.token_dim)
        return self.norm(tokens).reshape(b, f, self.config.tokens, self.config.token_dim)
