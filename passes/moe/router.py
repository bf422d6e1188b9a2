"""Routers for MoE-fied FFNs: linear maps x [D] -> expert scores [E] (top-k picks experts).

- `centroid` (data-free): expert e scores `x . sum_i w_i + sum_i b_i` over its neurons i,
  the sum of its pre-activations, i.e. the similarity of x to the expert's weight centroid
  (MoEfication's similarity selection). Large pre-activations mean large activations for
  ReLU/GELU/SiLU.
- `learned` (MoEfication's predictor, here linear and fitted in closed form): ridge regression
  from the FFN's calibration inputs to each expert's activation mass, the sum over its
  neurons of |activation| times the norm of the neuron's output weights (how much the
  expert adds to the output).
"""

from __future__ import annotations

import numpy as np

from sparsec.passes.moe.experts import Experts, hidden_activations


def centroid_router(ex: Experts) -> tuple[np.ndarray, np.ndarray]:
    """(router weight [D, E], router bias [E])."""
    return (np.ascontiguousarray(ex.w1.sum(axis=2).T, dtype=np.float32),
            np.ascontiguousarray(ex.b1.sum(axis=1), dtype=np.float32))


def expert_mass(x: np.ndarray, ex: Experts, activation: str) -> np.ndarray:
    """[T, E]: each expert's contribution estimate per token."""
    h = hidden_activations(x, ex, activation)  # [T, E*F]
    out_norm = np.linalg.norm(ex.w2, axis=2).reshape(-1)  # [E*F]
    contrib = np.abs(h) * out_norm
    return contrib.reshape(len(x), ex.count, -1).sum(axis=2)


def learned_router(x: np.ndarray, ex: Experts, activation: str, *, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression [x, 1] -> expert mass; (router weight [D, E], router bias [E])."""
    x = x.astype(np.float64)
    y = expert_mass(x, ex, activation)
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    gram = xa.T @ xa
    lam = ridge * np.trace(gram) / len(gram)
    coef = np.linalg.solve(gram + lam * np.eye(len(gram)), xa.T @ y)
    return np.ascontiguousarray(coef[:-1], dtype=np.float32), np.ascontiguousarray(coef[-1], dtype=np.float32)
