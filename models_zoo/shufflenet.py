"""ShuffleNetV2-style CNN: channel split, depthwise branch, concat and channel shuffle."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class ShuffleNetConfig:
    image_size: int = 64
    stem_channels: int = 32
    stages: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 2))  # (out channels, blocks)
    head_channels: int = 512
    num_classes: int = 10
    seed: int = 0


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride > 1 else cin // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, relu=False), conv_bn(cin, half, 1))
        self.branch2 = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, relu=False),
            conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, cfg: ShuffleNetConfig) -> None:
        super().__init__()
        self.stem = conv_bn(3, cfg.stem_channels, 3, 2)
        blocks: list[nn.Module] = []
        cin = cfg.stem_channels
        for cout, n in cfg.stages:
            for i in range(n):
                blocks.append(ShuffleBlock(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, cfg.head_channels, 1)
        self.fc = nn.Linear(cfg.head_channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build_shufflenet(cfg: ShuffleNetConfig | None = None) -> ShuffleNetV2:
    cfg = cfg or ShuffleNetConfig()
    return materialize(lambda: ShuffleNetV2(cfg), cfg.seed, default_init)


def shufflenet_inputs(batch: int) -> tuple[torch.Tensor]:
    return image_inputs(batch, (3, ShuffleNetConfig().image_size, ShuffleNetConfig().image_size))
