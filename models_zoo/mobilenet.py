"""MobileNetV2-style CNN: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project),
ReLU6, optional squeeze-and-excitation; channel counts are multiples of 16."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, init_batchnorm, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class MobileNetConfig:
    image_size: int = 64
    stem_channels: int = 32
    # (expansion t, output channels c, repeats n, first stride s, squeeze-excite) per stage,
    # as in MobileNetV2's table 2 with 24 -> 32 and SE on the later stages (MobileNetV3-like).
    stages: tuple[tuple[int, int, int, int, bool], ...] = (
        (1, 16, 1, 1, False),
        (6, 32, 2, 2, False),
        (6, 32, 2, 2, False),
        (6, 64, 2, 2, True),
        (6, 96, 1, 1, True),
        (6, 160, 2, 2, True),
        (6, 320, 1, 1, False),
    )
    head_channels: int = 1280
    se_reduction: int = 4
    num_classes: int = 10
    seed: int = 0


def conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(16, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, expansion: int, se: bool, se_reduction: int
    ) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.expand = conv_bn_act(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = conv_bn_act(hidden, hidden, 3, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, se_reduction) if se else None
        self.project = conv_bn_act(hidden, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    def __init__(self, cfg: MobileNetConfig) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, cfg.stem_channels, 3, stride=2)
        blocks: list[nn.Module] = []
        cin = cfg.stem_channels
        for t, c, n, s, se in cfg.stages:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t, se, cfg.se_reduction))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(cin, cfg.head_channels, 1)
        self.classifier = nn.Linear(cfg.head_channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(x.mean(dim=(2, 3)), 1))


def _init(model: MobileNetV2, gen: torch.Generator) -> None:
    default_init(model, gen)
    # Damp the residual branches (see resnet.py) so activations stay O(1) with depth.
    for module in model.modules():
        if isinstance(module, InvertedResidual) and module.use_residual:
            init_batchnorm(module.project[1], gen, gamma=(0.2, 0.4))


def build_mobilenet(cfg: MobileNetConfig | None = None) -> MobileNetV2:
    cfg = cfg or MobileNetConfig()
    return materialize(lambda: MobileNetV2(cfg), cfg.seed, _init)


def mobilenet_inputs(batch: int, cfg: MobileNetConfig | None = None) -> tuple[torch.Tensor]:
    cfg = cfg or MobileNetConfig()
    return image_inputs(batch, (3, cfg.image_size, cfg.image_size))
