"""GPT-style decoder: pre-LayerNorm blocks of causal self-attention and GELU FFN, untied LM head.

The LM head is untied from the token embedding so that every Linear owns its weight and
maps to exactly one ONNX initializer (a sparsified head then leaves the embedding dense).
"""

from __future__ import annotations

import torch
from torch import nn

from .init import init_transformer, materialize
from .inputs import token_inputs
from .transformer import Embeddings, FeedForward, SelfAttention, TransformerConfig, causal_mask

SMALL = TransformerConfig(
    vocab_size=1000, seq_len=64, hidden=256, n_layers=4, n_heads=4, ffn=1024, seed=1
)
# GPT-2 small shapes; vocabulary 50257 padded to 50304 (a multiple of 64), as nanoGPT does.
GPT_SMALL = TransformerConfig(
    vocab_size=50304, seq_len=128, hidden=768, n_layers=12, n_heads=12, ffn=3072, seed=124
)
# SMALL's shapes at a 4096-token prefill: attention dominates (issue 11's end-to-end bar). Each
# layer's dense score tensor is 4 x 4096^2 fp32 = 256 MiB, so one dense ORT run fits in ~2 GiB.
LONG = TransformerConfig(
    vocab_size=1000, seq_len=4096, hidden=256, n_layers=4, n_heads=4, ffn=1024, seed=4096
)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = SelfAttention(cfg.hidden, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp = FeedForward(cfg.hidden, cfg.ffn)

    def forward(self, x: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), future)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        future = causal_mask(input_ids.shape[1], input_ids.device)
        for layer in self.layers:
            x = layer(x, future)
        return self.lm_head(self.ln_f(x))  # logits [batch, seq, vocab]


def build_gpt(cfg: TransformerConfig = SMALL) -> GPT:
    return materialize(
        lambda: GPT(cfg), cfg.seed, lambda m, g: init_transformer(m, g, cfg.n_layers)
    )


def build_gpt_small() -> GPT:
    return build_gpt(GPT_SMALL)


def build_gpt_long() -> GPT:
    return build_gpt(LONG)


def gpt_inputs(batch: int, cfg: TransformerConfig = SMALL) -> tuple[torch.Tensor]:
    return token_inputs(batch, cfg.seq_len, cfg.vocab_size)


def gpt_small_inputs(batch: int) -> tuple[torch.Tensor]:
    return gpt_inputs(batch, GPT_SMALL)


def gpt_long_inputs(batch: int) -> tuple[torch.Tensor]:
    return gpt_inputs(batch, LONG)
