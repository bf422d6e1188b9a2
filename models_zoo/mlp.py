"""MLP: flattened 28x28 image -> hidden ReLU layers -> 10 logits (MNIST-shaped)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 784
    hidden: tuple[int, ...] = (1024, 1024)
    num_classes: int = 10
    seed: int = 0


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        dims = (cfg.in_features, *cfg.hidden)
        # ModuleList of plain Linear layers -> state_dict keys "layers.<i>.weight".
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = nn.Linear(dims[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def build_mlp(cfg: MLPConfig | None = None) -> MLP:
    cfg = cfg or MLPConfig()
    return materialize(lambda: MLP(cfg), cfg.seed, default_init)


def mlp_inputs(batch: int, cfg: MLPConfig | None = None) -> tuple[torch.Tensor]:
    cfg = cfg or MLPConfig()
    return image_inputs(batch, (cfg.in_features,))
