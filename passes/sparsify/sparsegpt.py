"""OBS-style one-shot reconstruction (SparseGPT, Frantar & Alistarh 2023).

Columns of `W2 [rows, K]` are pruned left to right; the error each pruned column leaves in
the layer output `X2 @ W2.T` is compensated by updating the not-yet-processed columns
through the inverse Hessian `H^-1` (H = X2^T X2), via its upper Cholesky factor. Masks are
chosen lazily: per N:M group when the group is reached, per column block for unstructured
and block patterns, on the OBS saliency w^2 / [H^-1]_jj^2.
"""

from __future__ import annotations

import numpy as np
import torch

from sparsec.passes.sparsify.patterns import Pattern

BLOCK = 128  # columns per lazy-update block (as in the reference implementation)


def _inverse_cholesky(gram: np.ndarray, damp: float) -> tuple[torch.Tensor, np.ndarray]:
    """The upper Cholesky factor V of (H + damping)^-1 (H^-1 = V^T V), in float32, and H's
    dead columns.

    With J the index reversal, the lower factor of J H J = L L^T gives H = U U^T with
    U = J L J upper, so V = U^-1 = J L^-1 J: one factorisation and one triangular inverse
    (2/3 K^3 flops) instead of factor, invert, factor again (4/3 K^3). All in one float64
    [K, K] buffer (~1 GB for an 11008-wide FFN input), filled already reversed; LAPACK works
    in place (the buffer read as Fortran order is its transpose, the same symmetric matrix).
    """
    k = gram.shape[0]
    dead = np.diag(gram) == 0
    h = np.empty((k, k), dtype=np.float64)
    diagonal = np.where(dead, 1.0, np.diag(gram).astype(np.float64))[::-1].copy()
    mean_diag = float(diagonal.mean())
    a = h.T  # Fortran-ordered view of the same memory
    from scipy.linalg import lapack  # on use: 0.12 s off every CLI start

    for scale in (1.0, 10.0, 100.0, 1000.0):  # more damping until H is positive definite
        h[...] = gram[::-1, ::-1]  # a failed factorisation overwrote part of the buffer: refill
        np.fill_diagonal(h, diagonal + damp * scale * mean_diag)
        chol, info = lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)  # J H J = L L^T
        if info == 0:
            break
    else:
        raise np.linalg.LinAlgError("input Gram matrix is not positive definite even with damping")
    inv, info = lapack.dtrtri(chol, lower=1, overwrite_c=1)  # L^-1, lower (in Fortran order)
    if info != 0:
        raise np.linalg.LinAlgError("inverting the Cholesky factor of the damped Gram matrix failed")
    # `h` now holds (L^-1)^T in its upper triangle (C order); its lower triangle is stale.
    for i in range(1, k):  # row by row: no index arrays of K^2 entries
        h[i, :i] = 0.0
    upper = np.ascontiguousarray(h[::-1, ::-1].T, dtype=np.float32)  # J L^-1 J
    return torch.from_numpy(upper), dead


def sparsegpt_prune(
    w2: np.ndarray, gram: np.ndarray, pattern: Pattern, *, damp: float = 0.01, block: int = BLOCK, keep_last: int = 0
) -> np.ndarray:
    """Prune `w2` to `pattern` and reconstruct the kept weights; returns the new W2.

    `keep_last`: trailing columns that are never pruned but take OBS updates (a bias fitted
    as the weight of a constant-1 input column); the pattern applies to the others.
    """
    if pattern.is_dense:
        return w2.copy()
    return _prune(w2, gram, pattern, damp, block, keep_last)


def _prune(w2: np.ndarray, gram: np.ndarray, pattern: Pattern, damp: float, block: int, keep_last: int) -> np.ndarray:
    hinv, dead = _inverse_cholesky(gram, damp)
    w = torch.from_numpy(np.array(w2, dtype=np.float32))
    w[:, torch.from_numpy(dead)] = 0.0
    rows, cols = w.shape
    prunable = cols - keep_last
    step = pattern.col_multiple
    block = max(step, block - block % step)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        # Work on the transposed block [cols, rows]: one column of W is then a contiguous row.
        w1 = w[:, i1:i2].T.contiguous()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(h1)
        if pattern.kind == "nm":  # masks chosen group by group, as the group is reached
            prune1 = torch.zeros_like(w1, dtype=torch.bool)
        else:  # whole-block mask on OBS saliency, before any update
            width = max(0, min(i2, prunable) - i1)
            prune1 = torch.zeros_like(w1, dtype=torch.bool)
            if width:
                saliency = (w1[:width] ** 2 / d1[:width, None] ** 2).T.numpy()
                prune1[:width] = torch.from_numpy(np.ascontiguousarray(~pattern.keep_mask(saliency).T))
        # The column loop is a chain of small rank-1 updates: one thread avoids per-op sync
        # costs (measured 2x faster on 2 cores); the block update after it is one big GEMM.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _obs_columns(w1, q1, err1, prune1, h1, d1, pattern, i1, prunable)
        finally:
            torch.set_num_threads(threads)
        w[:, i1:i2] = q1.T
        if i2 < cols:
            w[:, i2:] -= err1.T @ hinv[i1:i2, i2:]
    return w.numpy().astype(w2.dtype, copy=False)


def _obs_columns(
    w1: torch.Tensor, q1: torch.Tensor, err1: torch.Tensor, prune1: torch.Tensor, h1: torch.Tensor, d1: torch.Tensor,
    pattern: Pattern, i1: int, prunable: int,
) -> None:
    """Prune the columns of one block in order (rows of the transposed block `w1`), each
    error compensated in the block's later columns; `q1`/`err1` receive the pruned columns
    and their scaled errors."""
    for i in range(w1.shape[0]):
        if pattern.kind == "nm" and i % pattern.m == 0 and i1 + i < prunable:
            group = w1[i : i + pattern.m] ** 2 / d1[i : i + pattern.m, None] ** 2
            drop = torch.topk(group, pattern.m - pattern.n, dim=0, largest=False).indices
            prune1[i : i + pattern.m].scatter_(0, drop, True)
        col = w1[i]
        q = col.masked_fill(prune1[i], 0.0)
        q1[i] = q
        e = (col - q) / h1[i, i]
        w1[i:] -= torch.outer(h1[i, i:], e)
        err1[i] = e
