"""GPT-style decoder with grouped-query attention (several query heads share a K/V head).

K/V heads are repeated to the query heads with a constant index (`index_select`), which
exports as a Gather with constant indices: cropping a K/V head removes its query heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .init import init_transformer, materialize
from .inputs import token_inputs
from .transformer import FeedForward


@dataclass(frozen=True)
class GQAConfig:
    vocab_size: int = 1000
    seq_len: int = 64
    hidden: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    ffn: int = 768
    seed: int = 7


class GQAttention(nn.Module):
    def __init__(self, cfg: GQAConfig) -> None:
        super().__init__()
        self.h, self.kv, self.d = cfg.n_heads, cfg.n_kv_heads, cfg.hidden // cfg.n_heads
        self.q_proj = nn.Linear(cfg.hidden, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden, bias=False)
        self.register_buffer("kv_index", torch.arange(self.h) // (self.h // self.kv), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).reshape(b, s, self.kv, self.d).transpose(1, 2).index_select(1, self.kv_index)
        v = self.v_proj(x).reshape(b, s, self.kv, self.d).transpose(1, 2).index_select(1, self.kv_index)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d))
        future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(ctx.transpose(1, 2).reshape(b, s, self.h * self.d))


class GQALayer(nn.Module):
    def __init__(self, cfg: GQAConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = GQAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp = FeedForward(cfg.hidden, cfg.ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GQADecoder(nn.Module):
    def __init__(self, cfg: GQAConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.hidden)
        self.layers = nn.ModuleList(GQALayer(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids) + self.pos_emb.weight[: input_ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_f(x))


def _init(model: GQADecoder, gen: torch.Generator) -> None:
    init_transformer(model, gen, len(model.layers))
    for m in model.modules():
        if isinstance(m, GQAttention):
            m.kv_index.copy_(torch.arange(m.h) // (m.h // m.kv))


def build_gpt_gqa(cfg: GQAConfig | None = None) -> GQADecoder:
    cfg = cfg or GQAConfig()
    return materialize(lambda: GQADecoder(cfg), cfg.seed, _init)


def gpt_gqa_inputs(batch: int) -> tuple[torch.Tensor]:
    cfg = GQAConfig()
    return token_inputs(batch, cfg.seq_len, cfg.vocab_size)
