"""BERT-style encoder: post-LayerNorm blocks of bidirectional self-attention and GELU FFN."""

from __future__ import annotations

import torch
from torch import nn

from .init import init_transformer, materialize
from .inputs import token_inputs
from .transformer import Embeddings, FeedForward, SelfAttention, TransformerConfig

SMALL = TransformerConfig(vocab_size=1000, seq_len=64, hidden=256, n_layers=4, n_heads=4, ffn=1024)
BASE = TransformerConfig(
    vocab_size=30522, seq_len=128, hidden=768, n_layers=12, n_heads=12, ffn=3072, seed=12
)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.hidden, cfg.n_heads)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.mlp = FeedForward(cfg.hidden, cfg.ffn)
        self.mlp_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x))
        return self.mlp_norm(x + self.mlp(x))


class Bert(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.emb_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb_norm(self.embeddings(input_ids))
        for layer in self.layers:
            x = layer(x)
        return x  # last_hidden_state [batch, seq, hidden]


def build_bert(cfg: TransformerConfig = SMALL) -> Bert:
    return materialize(
        lambda: Bert(cfg), cfg.seed, lambda m, g: init_transformer(m, g, cfg.n_layers)
    )


def build_bert_base() -> Bert:
    return build_bert(BASE)


def bert_inputs(batch: int, cfg: TransformerConfig = SMALL) -> tuple[torch.Tensor]:
    return token_inputs(batch, cfg.seq_len, cfg.vocab_size)


def bert_base_inputs(batch: int) -> tuple[torch.Tensor]:
    return bert_inputs(batch, BASE)
