"""ResNet with bottleneck blocks (He et al. 2016, v1.5: stride on the 3x3 conv).

Two configurations: a small one for 64x64 inputs (fast tests) and true ResNet-50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, init_batchnorm, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class ResNetConfig:
    image_size: int = 64
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 1
    stem_pool: bool = False
    widths: tuple[int, ...] = (32, 64, 128)  # bottleneck inner widths; block output = 4x
    depths: tuple[int, ...] = (2, 2, 2)
    num_classes: int = 10
    seed: int = 0


SMALL = ResNetConfig()
RESNET50 = ResNetConfig(
    image_size=224,
    stem_channels=64,
    stem_kernel=7,
    stem_stride=2,
    stem_pool=True,
    widths=(64, 128, 256, 512),
    depths=(3, 4, 6, 3),
    num_classes=1000,
    seed=50,
)

EXPANSION = 4


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, cout, 1)
        self.downsample = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        return torch.relu(self.conv3(y) + identity)


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.stem = conv_bn(3, cfg.stem_channels, cfg.stem_kernel, cfg.stem_stride)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if cfg.stem_pool else nn.Identity()
        stages: list[nn.Sequential] = []
        cin = cfg.stem_channels
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width * EXPANSION
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.stem(x)))
        x = self.stages(x)
        x = torch.flatten(x.mean(dim=(2, 3)), 1)
        return self.fc(x)


def _init(model: ResNet, gen: torch.Generator) -> None:
    default_init(model, gen)
    # Smaller gamma on the last BN of each residual branch (a softened "zero-init residual")
    # keeps activations from growing with depth while leaving the branch non-degenerate.
    for module in model.modules():
        if isinstance(module, Bottleneck):
            init_batchnorm(module.conv3[1], gen, gamma=(0.2, 0.4))


def build_resnet(cfg: ResNetConfig = SMALL) -> ResNet:
    return materialize(lambda: ResNet(cfg), cfg.seed, _init)


def build_resnet50() -> ResNet:
    return build_resnet(RESNET50)


def resnet_inputs(batch: int, cfg: ResNetConfig = SMALL) -> tuple[torch.Tensor]:
    return image_inputs(batch, (3, cfg.image_size, cfg.image_size))


def resnet50_inputs(batch: int) -> tuple[torch.Tensor]:
    return resnet_inputs(batch, RESNET50)
