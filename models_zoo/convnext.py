"""ConvNeXt-style CNN: 7x7 depthwise conv, LayerNorm over channels, inverted MLP, layer scale."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import default_init, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class ConvNeXtConfig:
    image_size: int = 64
    dims: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (2, 2, 2)
    num_classes: int = 10
    seed: int = 0


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (as ConvNeXt's stem/downsampling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(torch.nn.functional.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, cfg: ConvNeXtConfig) -> None:
        super().__init__()
        stages: list[nn.Module] = [nn.Conv2d(3, cfg.dims[0], 4, stride=4), ChannelsFirstLayerNorm(cfg.dims[0])]
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths, strict=True)):
            if i > 0:
                stages += [ChannelsFirstLayerNorm(cfg.dims[i - 1]), nn.Conv2d(cfg.dims[i - 1], dim, 2, stride=2)]
            stages += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=1e-6)
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stages(x).mean(dim=(2, 3))))


def _init(model: ConvNeXt, gen: torch.Generator) -> None:
    default_init(model, gen)
    for m in model.modules():
        if isinstance(m, ConvNeXtBlock):
            m.gamma.copy_(0.1 + 0.1 * torch.rand(m.gamma.shape, generator=gen))


def build_convnext(cfg: ConvNeXtConfig | None = None) -> ConvNeXt:
    cfg = cfg or ConvNeXtConfig()
    return materialize(lambda: ConvNeXt(cfg), cfg.seed, _init)


def convnext_inputs(batch: int) -> tuple[torch.Tensor]:
    return image_inputs(batch, (3, ConvNeXtConfig().image_size, ConvNeXtConfig().image_size))
