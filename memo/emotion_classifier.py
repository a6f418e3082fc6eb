"""MEMO audio emotion classifier: mean emotion2vec+ features ``(B, 1024)`` -> 9 class probabilities.

MLP ``layers.fc1`` 1024->2048, ``fc2..fc4`` 2048->2048 (ReLU after each), ``fc5`` 2048->9, softmax. Classes follow
the emotion2vec+ order; the Diffusion Net reserves label 9 for the null (unconditional) class.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

EMOTION_LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
NULL_EMOTION = 9


@dataclass
class EmotionClassifierConfig:
    in_features: int = 1024
    num_layers: int = 5
    hidden: int = 2048
    num_classes: int = 9


class EmotionClassifier(nn.Module):
    """``forward`` returns softmax probabilities ``(B, 9)``; :meth:`classify` the argmax labels (int64)."""

    def __init__(self, config: EmotionClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or EmotionClassifierConfig()
        if config.num_layers == 1:
            self.layers = nn.Linear(config.in_features, config.num_classes)
        else:
            layers: list[tuple[str, nn.Module]] = [("fc1", nn.Linear(config.in_features, config.hidden)),
                                                   ("relu1", nn.ReLU())]
            for n in range(2, config.num_layers):
                layers += [(f"fc{n}", nn.Linear(config.hidden, config.hidden)), (f"relu{n}", nn.ReLU())]
            layers.append((f"fc{config.num_layers}", nn.Linear(config.hidden, config.num_classes)))
            self.layers = nn.Sequential(OrderedDict(layers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.layers(features.to(next(self.parameters()).dtype))
        return torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward(features).argmax(dim=-1)
