"""torchvision's ShuffleNetV2 (x1.0 widths), written out as torchvision writes it.

Differs from `shufflenet.py` where real exports differ: the pass-through half comes from
`x.chunk(2, dim=1)`, the channel shuffle is `view -> transpose -> contiguous -> view`, the
stem has a max-pool, stages repeat [4, 8, 4] with widths [24, 116, 232, 464, 1024] (the
x1.0 model), and the module names are torchvision's (`conv1`, `stage2.0.branch1.0`, ...),
so a state_dict of this model loads into torchvision's and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class ShuffleNetV2Config:
    image_size: int = 64  # torchvision's is 224; the structure does not depend on it
    stages_repeats: tuple[int, ...] = (4, 8, 4)
    stages_out_channels: tuple[int, ...] = (24, 116, 232, 464, 1024)  # x1.0
    num_classes: int = 1000
    seed: int = 0


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


def _depthwise_conv(i: int, o: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(i, o, kernel_size, stride, padding, bias=False, groups=i)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise_conv(inp, inp, kernel_size=3, stride=stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            _depthwise_conv(branch_features, branch_features, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, cfg: ShuffleNetV2Config) -> None:
        super().__init__()
        widths = cfg.stages_out_channels
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = widths[0]
        for name, repeats, cout in zip(("stage2", "stage3", "stage4"), cfg.stages_repeats, widths[1:], strict=False):
            seq = [InvertedResidual(cin, cout, 2)] + [InvertedResidual(cout, cout, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            cin = cout
        self.conv5 = nn.Sequential(
            nn.Conv2d(cin, widths[-1], 1, 1, 0, bias=False), nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(widths[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)


def build_shufflenet_v2_tv(cfg: ShuffleNetV2Config | None = None) -> ShuffleNetV2:
    cfg = cfg or ShuffleNetV2Config()
    return materialize(lambda: ShuffleNetV2(cfg), cfg.seed, default_init)


def shufflenet_v2_tv_inputs(batch: int) -> tuple[torch.Tensor]:
    size = ShuffleNetV2Config().image_size
    return image_inputs(batch, (3, size, size))
