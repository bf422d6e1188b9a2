"""DenseNet-BC-style CNN: pre-activation bottleneck layers whose outputs are concatenated."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class DenseNetConfig:
    image_size: int = 64
    stem_channels: int = 32
    growth: int = 16
    blocks: tuple[int, ...] = (3, 3, 3)
    bottleneck: int = 4  # 1x1 conv width = bottleneck * growth
    num_classes: int = 10
    seed: int = 0


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.norm1(x)))
        y = self.conv2(torch.relu(self.norm2(y)))
        return torch.cat((x, y), dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(torch.relu(self.norm(x))))


class DenseNet(nn.Module):
    def __init__(self, cfg: DenseNetConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, cfg.stem_channels, 3, stride=2, padding=1, bias=False)
        layers: list[nn.Module] = []
        c = cfg.stem_channels
        for i, n in enumerate(cfg.blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, cfg.growth, cfg.bottleneck))
                c += cfg.growth
            if i + 1 < len(cfg.blocks):
                layers.append(Transition(c, c // 2))
                c //= 2
        self.features = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.features(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def build_densenet(cfg: DenseNetConfig | None = None) -> DenseNet:
    cfg = cfg or DenseNetConfig()
    return materialize(lambda: DenseNet(cfg), cfg.seed, default_init)


def densenet_inputs(batch: int) -> tuple[torch.Tensor]:
    return image_inputs(batch, (3, DenseNetConfig().image_size, DenseNetConfig().image_size))
