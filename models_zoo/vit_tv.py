"""torchvision's ViT-B/16 structure, written out as torchvision writes it, with 3 blocks.

Differs from `vit.py` where real exports differ: `nn.MultiheadAttention` (packed in-projection,
`batch_first=True`, `need_weights=False`), a class token concatenated before the encoder,
the position embedding added inside the encoder, `x.reshape(n, hidden, n_h * n_w).permute`
after the conv patch embedding, LayerNorm eps 1e-6 and torchvision's module names
(`conv_proj`, `encoder.layers.encoder_layer_0.self_attention.in_proj_weight`, ...).
Hidden 768, 12 heads and MLP 3072 are ViT-B's; the image is smaller than 224 to keep the
sequence (and the tests) short, which changes no operator.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .init import TRANSFORMER_STD, init_module, materialize
from .inputs import image_inputs


@dataclass(frozen=True)
class ViTB16Config:
    image_size: int = 64
    patch_size: int = 16
    num_layers: int = 3
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    num_classes: int = 1000
    seed: int = 0


class MLPBlock(nn.Sequential):
    def __init__(self, in_dim: int, mlp_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, in_dim), nn.Dropout(0.0))


class EncoderBlock(nn.Module):
    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.ln_1 = norm(hidden_dim)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = norm(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (torchvision's name)
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + input
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, cfg: ViTB16Config) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, cfg.hidden_dim))
        self.dropout = nn.Dropout(0.0)
        layers = OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(cfg.num_heads, cfg.hidden_dim, cfg.mlp_dim)) for i in range(cfg.num_layers)
        )
        self.layers = nn.Sequential(layers)
        self.ln = nn.LayerNorm(cfg.hidden_dim, eps=1e-6)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return self.ln(self.layers(self.dropout(input + self.pos_embedding)))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTB16Config) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = cfg.image_size, cfg.patch_size, cfg.hidden_dim
        self.conv_proj = nn.Conv2d(3, cfg.hidden_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        seq_length = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.empty(1, 1, cfg.hidden_dim))
        self.encoder = Encoder(seq_length, cfg)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(cfg.hidden_dim, cfg.num_classes)))

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        n_h, n_w = h // self.patch_size, w // self.patch_size
        x = self.conv_proj(x)
        return x.reshape(n, self.hidden_dim, n_h * n_w).permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        batch_class_token = self.class_token.expand(x.shape[0], -1, -1)
        x = self.encoder(torch.cat([batch_class_token, x], dim=1))
        return self.heads(x[:, 0])


def _init(model: VisionTransformer, gen: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.copy_(torch.randn(module.in_proj_weight.shape, generator=gen) * TRANSFORMER_STD)
            module.in_proj_bias.copy_(torch.randn(module.in_proj_bias.shape, generator=gen) * 0.01)
        elif isinstance(module, nn.Linear):  # incl. MultiheadAttention's out_proj
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * TRANSFORMER_STD)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * math.prod(module.kernel_size)
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(1.0 / fan_in))
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
        else:
            init_module(module, gen)
    model.class_token.copy_(TRANSFORMER_STD * torch.randn(model.class_token.shape, generator=gen))
    pos = model.encoder.pos_embedding
    pos.copy_(TRANSFORMER_STD * torch.randn(pos.shape, generator=gen))


def build_vit_b16_tv(cfg: ViTB16Config | None = None) -> VisionTransformer:
    cfg = cfg or ViTB16Config()
    return materialize(lambda: VisionTransformer(cfg), cfg.seed, _init)


def vit_b16_tv_inputs(batch: int) -> tuple[torch.Tensor]:
    size = ViTB16Config().image_size
    return image_inputs(batch, (3, size, size))
