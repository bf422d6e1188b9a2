"""A wide MLP for the 8x8 digits: the demo's default, sized so that 2:4 kernels pay off.

The digits CNN's layers are far below the sparse kernels' 65,536-weight minimum, so a 2:4
compile of it stays dense and runs at 1.00x. This model classifies the same real images
with a 4096x4096 hidden layer: at batch 1 its ~68 MB of fp32 weights are at least twice a
typical last-level cache, so inference streams weights from memory and the packed 2:4
weights (about 0.53x the bytes) make it faster on any CPU, not only on a tuned one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .mlp import MLP, MLPConfig


@dataclass(frozen=True)
class DigitsMLPConfig:
    hidden: tuple[int, ...] = (4096, 4096)
    num_classes: int = 10
    seed: int = 0


class DigitsMLP(nn.Module):
    def __init__(self, cfg: DigitsMLPConfig) -> None:
        super().__init__()
        self.mlp = MLP(MLPConfig(64, cfg.hidden, cfg.num_classes, cfg.seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, 1, 8, 8] in [0, 1]
        return self.mlp(torch.flatten(x, 1))


def init_digits_mlp(cfg: DigitsMLPConfig) -> DigitsMLP:
    """The untrained network with its deterministic initial weights."""
    return materialize(lambda: DigitsMLP(cfg), cfg.seed, default_init)
