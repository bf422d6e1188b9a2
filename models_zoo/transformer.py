"""Transformer building blocks shared by the BERT and GPT builders.

Attention is written out (explicit Q/K/V/O Linear layers, reshape/transpose to heads,
MatMul-Softmax-MatMul) rather than calling scaled_dot_product_attention, so the exported
ONNX graph shows every projection and the score matrix to the sparsity passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 1000
    seq_len: int = 64  # also the number of learned positions
    hidden: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by n_heads={self.n_heads}")


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = hidden // n_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.reshape(b, s, self.n_heads, self.head_dim).transpose(1, 2)  # [b, h, s, d]

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """``masked``: optional bool [seq, seq], True where a query must not see a key."""
        b, s, hidden = x.shape
        q, k, v = (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(x)),
            self._heads(self.v_proj(x)),
        )
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(ctx.transpose(1, 2).reshape(b, s, hidden))


def causal_mask(seq_len: int, device: torch.device) -> torch.Tensor:
    """bool [seq, seq], True above the diagonal (the future). Built once per forward so the
    exported graph holds a single mask shared by all layers."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(1)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Embeddings(nn.Module):
    """Token + learned absolute position embeddings."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Slicing the table (not gathering arange) keeps positions a constant in the graph.
        return self.tok_emb(input_ids) + self.pos_emb.weight[: input_ids.shape[1]]
