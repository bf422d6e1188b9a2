"""Vision Transformer: conv patch embedding, class token, learned positions, pre-LN blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .init import init_transformer, materialize
from .inputs import image_inputs
from .transformer import FeedForward


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32
    patch: int = 4
    hidden: int = 192
    n_layers: int = 4
    n_heads: int = 4
    ffn: int = 768
    num_classes: int = 10
    seed: int = 0


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with explicit Q/K/V/O projections."""

    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.h, self.d = n_heads, hidden // n_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, hidden = x.shape
        q, k, v = (p(x).reshape(b, s, self.h, self.d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(ctx.transpose(1, 2).reshape(b, s, hidden))


class ViTBlock(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = Attention(cfg.hidden, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp = FeedForward(cfg.hidden, cfg.ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        n = (cfg.image_size // cfg.patch) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.hidden, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.empty(1, 1, cfg.hidden))
        self.pos_emb = nn.Parameter(torch.empty(1, n + 1, cfg.hidden))
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [b, patches, hidden]
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def _init(model: ViT, gen: torch.Generator) -> None:
    init_transformer(model, gen, len(model.blocks))
    model.cls_token.copy_(0.02 * torch.randn(model.cls_token.shape, generator=gen))
    model.pos_emb.copy_(0.02 * torch.randn(model.pos_emb.shape, generator=gen))


def build_vit(cfg: ViTConfig | None = None) -> ViT:
    cfg = cfg or ViTConfig()
    return materialize(lambda: ViT(cfg), cfg.seed, _init)


def vit_inputs(batch: int) -> tuple[torch.Tensor]:
    return image_inputs(batch, (3, ViTConfig().image_size, ViTConfig().image_size))
