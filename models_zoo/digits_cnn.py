"""Small CNN for the 8x8 handwritten digits of ``sklearn.datasets.load_digits``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize


@dataclass(frozen=True)
class DigitsCNNConfig:
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    num_classes: int = 10
    seed: int = 0


class DigitsCNN(nn.Module):
    def __init__(self, cfg: DigitsCNNConfig) -> None:
        super().__init__()
        c1, c2 = cfg.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 4 * 4, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, 1, 8, 8] in [0, 1]
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))  # [batch, c2, 4, 4]
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def init_digits_cnn(cfg: DigitsCNNConfig) -> DigitsCNN:
    """The untrained network with its deterministic initial weights."""
    return materialize(lambda: DigitsCNN(cfg), cfg.seed, default_init)
