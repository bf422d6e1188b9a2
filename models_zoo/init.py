"""Deterministic weight initialisation for zoo models.

Models are constructed on the ``meta`` device (so construction neither allocates nor touches
the global RNG) and then every parameter and buffer is filled from one seeded
``torch.Generator``. Two builds therefore give bit-identical state_dicts, and building a
model never perturbs the caller's random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

# Standard deviation for Linear/Embedding weights in transformers (as BERT/GPT-2 do).
TRANSFORMER_STD = 0.02


def materialize(
    factory: Callable[[], M], seed: int, init: Callable[[M, torch.Generator], None]
) -> M:
    """Build ``factory()`` on the meta device, allocate it on CPU and fill it with ``init``.

    Raises if ``init`` left any parameter or buffer untouched (its memory would be garbage).
    """
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device="cpu")
    # Poison everything first: a tensor that init forgets stays NaN and is caught below.
    with torch.no_grad():
        for t in _floating_tensors(model):
            t.fill_(math.nan)
        for _, b in model.named_buffers():
            if not b.is_floating_point():
                b.zero_()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        init(model, gen)
    missing = [n for n, t in _named_floating(model) if torch.isnan(t).any()]
    if missing:
        raise RuntimeError(f"deterministic init left tensors uninitialised: {missing}")
    return model.eval()


def default_init(model: nn.Module, gen: torch.Generator) -> None:
    """Init every standard layer type the zoo uses; modules are visited in definition order."""
    for module in model.modules():
        init_module(module, gen)


def init_module(module: nn.Module, gen: torch.Generator) -> None:
    """Initialise the direct parameters/buffers of one standard module (no recursion)."""
    if isinstance(module, nn.Conv2d):
        # Kaiming (fan-in, ReLU gain) keeps the activation scale roughly constant with depth.
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        _normal(module.weight, math.sqrt(2.0 / fan_in), gen)
        if module.bias is not None:
            _normal(module.bias, 0.01, gen)
    elif isinstance(module, nn.Linear):
        # Same ReLU gain as convs: zoo MLP/CNN heads follow ReLU activations.
        _normal(module.weight, math.sqrt(2.0 / module.in_features), gen)
        if module.bias is not None:
            _normal(module.bias, 0.01, gen)
    elif isinstance(module, nn.BatchNorm2d):
        init_batchnorm(module, gen)
    elif isinstance(module, nn.LayerNorm):
        # Near-identity but not exactly 1/0, so a pass that folds LayerNorm is actually tested.
        if module.weight is not None:
            _uniform(module.weight, 0.9, 1.1, gen)
        if module.bias is not None:
            _normal(module.bias, 0.02, gen)
    elif isinstance(module, nn.Embedding):
        _normal(module.weight, TRANSFORMER_STD, gen)


def init_batchnorm(
    bn: nn.BatchNorm2d, gen: torch.Generator, gamma: tuple[float, float] = (0.5, 1.0)
) -> None:
    """Non-trivial but well-scaled BatchNorm: affine params and running stats all vary per channel."""
    _uniform(bn.weight, gamma[0], gamma[1], gen)
    _normal(bn.bias, 0.05, gen)
    _normal(bn.running_mean, 0.05, gen)
    _uniform(bn.running_var, 0.8, 1.25, gen)
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.fill_(0)


def init_transformer(model: nn.Module, gen: torch.Generator, n_layers: int) -> None:
    """GPT-2/BERT style: N(0, 0.02) weights; residual output projections scaled by 1/sqrt(2L)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = TRANSFORMER_STD
            if name.endswith((".o_proj", ".fc2")):
                std /= math.sqrt(2 * n_layers)
            _normal(module.weight, std, gen)
            if module.bias is not None:
                _normal(module.bias, 0.01, gen)
        else:
            init_module(module, gen)


def _normal(t: torch.Tensor, std: float, gen: torch.Generator) -> None:
    t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std)


def _uniform(t: torch.Tensor, lo: float, hi: float, gen: torch.Generator) -> None:
    t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen, dtype=t.dtype))


def _named_floating(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [(n, t) for n, t in named if t.is_floating_point()]


def _floating_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t for _, t in _named_floating(model)]
