"""Pruning criteria: which weights of a layer survive, and what values they keep.

- `magnitude`: keep the largest |w| (needs no data);
- `wanda`: keep the largest |w| * ||x_j|| (Sun et al. 2023; ||x_j|| over calibration rows);
- `sparsegpt`: OBS-style reconstruction that also updates the kept weights (sparsegpt.py).
All work on the layer's 2-D view W2 [rows, K] with its input statistics (LayerStats).
"""

from __future__ import annotations

import numpy as np

from sparsec.errors import PipelineError
from sparsec.passes.analysis.layer_stats import LayerStats
from sparsec.passes.sparsify.patterns import Pattern

CRITERIA = ("magnitude", "wanda", "sparsegpt")


def check_criterion(criterion: str, pass_name: str) -> None:
    if criterion not in CRITERIA:
        raise PipelineError(f"pass '{pass_name}': unknown criterion '{criterion}' (known: {', '.join(CRITERIA)})")


def needs_data(criterion: str) -> bool:
    return criterion != "magnitude"


def prune_2d(w2: np.ndarray, pattern: Pattern, criterion: str, stats: LayerStats | None) -> np.ndarray:
    """The pruned (and for sparsegpt, reconstructed) W2; magnitude when `stats` is None."""
    if pattern.is_dense:
        return w2.copy()
    if criterion == "sparsegpt" and stats is not None:
        # Imported on use: sparsegpt needs torch, which `import sparsec` should not load.
        from sparsec.passes.sparsify.sparsegpt import sparsegpt_prune

        return sparsegpt_prune(w2, stats.gram, pattern)
    scores = np.abs(w2.astype(np.float32))
    if criterion == "wanda" and stats is not None:
        scores = scores * np.sqrt(np.maximum(stats.col_sq_mean, 0.0))[None, :].astype(np.float32)
        if pattern.kind == "unstructured":  # Wanda compares weights per output row
            keep = np.stack([pattern.keep_mask(row[None, :])[0] for row in scores])
            return np.where(keep, w2, np.zeros_like(w2))
    keep = pattern.keep_mask(scores)
    return np.where(keep, w2, np.zeros_like(w2))


def dense_target(w2: np.ndarray, stats: LayerStats, cross: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """The dense weight that best maps the (already perturbed) inputs X~ to the dense outputs X W^T.

    Minimises ||X~ W'^T - X W^T|| with a ridge towards W: W' = W + W (C^T - H~) (H~ + damp I)^-1,
    C = X~^T X. Pruning W' instead of W lets each layer also correct the error that earlier
    pruned layers left in its input; with unchanged inputs (C = H~) it is W itself.
    """
    h = stats.gram.astype(np.float64)
    lam = damp * float(np.mean(np.diag(h))) or 1e-8
    w = w2.astype(np.float64)
    rhs = w @ (cross.T.astype(np.float64) - h)  # [rows, K]
    correction = np.linalg.solve(h + lam * np.eye(h.shape[0]), rhs.T).T
    return (w + correction).astype(w2.dtype)


def output_error(w2: np.ndarray, new2: np.ndarray, stats: LayerStats) -> float:
    """Relative layer-output error ||X (W - W')^T|| / ||X W^T|| from the Gram matrix alone."""
    d = (w2 - new2).astype(np.float64)
    w = w2.astype(np.float64)
    g = stats.gram.astype(np.float64)
    # sum_ij (D G)_ij D_ij: a matmul then an elementwise product (einsum here would loop naively).
    num = float(np.sum((d @ g) * d))
    den = float(np.sum((w @ g) * w))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0
