"""Deterministic example inputs (a local generator per call; the global RNG is untouched)."""

from __future__ import annotations

import torch

# Offset per input kind so that, e.g., image and token inputs of one batch size differ.
_IMAGE_SEED = 10_000
_TOKEN_SEED = 20_000


def image_inputs(batch: int, shape: tuple[int, ...]) -> tuple[torch.Tensor]:
    """Normalised-image-like float32 input [batch, *shape] ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(_IMAGE_SEED + batch)
    return (torch.randn((batch, *shape), generator=gen),)


def token_inputs(batch: int, seq_len: int, vocab_size: int) -> tuple[torch.Tensor]:
    """int64 token ids [batch, seq_len] drawn uniformly from the vocabulary."""
    gen = torch.Generator().manual_seed(_TOKEN_SEED + batch)
    return (torch.randint(0, vocab_size, (batch, seq_len), generator=gen, dtype=torch.int64),)
