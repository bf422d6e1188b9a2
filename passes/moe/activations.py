"""The FFN activations sparsec routes, as numpy functions (names as in `com.sparsec.MoE`).

The finder recognises an activation by evaluating the exported subgraph between the two
projections on a grid and comparing it with these functions: exporters spell GELU as an
`Erf` chain, a `Tanh` chain with `Pow`, or a `Gelu` op, in varying orders, and the numbers
decide where the spellings do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from sparsec.dialect.moe import MOE_ACTIVATIONS


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "silu": silu,
}
assert tuple(ACTIVATIONS) == MOE_ACTIVATIONS
