"""EfficientNet-style CNN: MBConv blocks (expand, 3x3/5x5 depthwise, squeeze-excite with SiLU,
project), residuals, and a MobileNetV3-style hard-swish head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class EfficientNetConfig:
    image_size: int = 64
    stem_channels: int = 32
    # (expansion, kernel, out channels, repeats, first stride)
    stages: tuple[tuple[int, int, int, int, int], ...] = (
        (1, 3, 16, 1, 1),
        (6, 3, 32, 2, 2),
        (6, 5, 48, 2, 2),
        (6, 3, 96, 2, 2),
        (6, 5, 128, 1, 1),
    )
    head_channels: int = 512
    num_classes: int = 10
    seed: int = 0


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.nn.functional.silu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.expand = conv_bn(cin, hidden, 1, act=nn.SiLU()) if expansion != 1 else None
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU())
        self.se = SqueezeExcite(hidden, max(8, cin // 4))
        self.project = conv_bn(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.se(self.depthwise(y)))
        return x + y if self.residual else y


class EfficientNet(nn.Module):
    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        self.stem = conv_bn(3, cfg.stem_channels, 3, 2, act=nn.SiLU())
        blocks: list[nn.Module] = []
        cin = cfg.stem_channels
        for t, k, c, n, s in cfg.stages:
            for i in range(n):
                blocks.append(MBConv(cin, c, t, k, s if i == 0 else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, cfg.head_channels, 1, act=nn.Hardswish())
        self.fc = nn.Linear(cfg.head_channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _init(model: EfficientNet, gen: torch.Generator) -> None:
    default_init(model, gen)
    # Open the squeeze-excite gates (sigmoid ~ 0.9) so the signal does not fade with depth,
    # and give the SiLU layers a larger gain so that samples stay distinguishable.
    for m in model.modules():
        if isinstance(m, SqueezeExcite):
            m.expand.bias.copy_(2.5 + 0.1 * torch.randn(m.expand.bias.shape, generator=gen))
        if isinstance(m, nn.BatchNorm2d):
            m.weight.mul_(1.25)


def build_efficientnet(cfg: EfficientNetConfig | None = None) -> EfficientNet:
    cfg = cfg or EfficientNetConfig()
    return materialize(lambda: EfficientNet(cfg), cfg.seed, _init)


def efficientnet_inputs(batch: int) -> tuple[torch.Tensor]:
    return image_inputs(batch, (3, EfficientNetConfig().image_size, EfficientNetConfig().image_size))
