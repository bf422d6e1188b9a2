"""Pruning criteria: which weights of a layer survive, and what values they keep.

- `magnitude`: keep the largest |w| (needs no data);
- `wanda`: keep the largest |w| * ||x_j|| (Sun et al. 2023; ||x_j|| over calibration rows);
- `sparsegpt`: OBS-style reconstruction that also updates the kept weights (sparsegpt.py).
All work on the layer's 2-D view W2 [rows, K] with its input statistics (LayerStats).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sparsec.calib.stats import LayerStats
from sparsec.errors import PipelineError
from sparsec.passes.sparsify.patterns import Pattern
from sparsec.pm.pass_base import option

CRITERIA = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Reconstruction:
    """How `sparsegpt` corrects what pruning leaves; all closed-form on calibration data.

    - `damp`: ridge on the Hessian, as a fraction of its mean diagonal;
    - `correct` (sequential): reconstruct towards the dense model's layer outputs from the
      already-perturbed inputs (`dense_target`), not the layer's own output on them;
    - `fit_bias`: treat the layer's bias as the weight of a constant-1 input that is never
      pruned, so OBS updates also correct the output's mean;
    - `refit_norms` (sequential): once every layer upstream of a LayerNormalization is pruned,
      refit its per-channel scale and shift towards the dense model's norm output;
    - `refit_kept`: once the mask is chosen, solve each output row's kept weights exactly
      (least squares with the mask fixed; OBS's column-by-column updates only approximate it).
    - `residual` (with `correct`): where the layer's output is added to a skip connection, the
      target also makes up the error the skip carries (the block's sum matches the dense one).
    Defaults follow the MiniLM 2:4 ablation (bench/quality_eval.py): `correct`, `fit_bias` and
    `refit_kept` each raised the held-out cosine; `refit_norms` made no measurable difference.
    """

    damp: float = 0.01
    correct: bool = True
    fit_bias: bool = True
    refit_norms: bool = False
    refit_kept: bool = True
    residual: bool = True

    @classmethod
    def of(cls, options: Any) -> Reconstruction:
        """The settings of a pass that declares every field with `reconstruction_option`."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls)})


_RECONSTRUCTION_HELP = {
    "damp": "sparsegpt: Hessian damping, as a fraction of its mean diagonal",
    "correct": "sparsegpt, sequential: reconstruct towards the dense model's layer outputs",
    "fit_bias": "sparsegpt: refit each layer's bias (a never-pruned constant-1 input)",
    "refit_norms": "sparsegpt, sequential: refit LayerNormalization scale/shift towards the dense model",
    "refit_kept": "sparsegpt: solve each row's kept weights exactly once the mask is chosen",
    "residual": "sparsegpt, correct: also make up the error a skip connection carries around the layer",
}


def reconstruction_option(name: str) -> Any:
    """A pass option for the Reconstruction field `name`: its default and one help text,
    shared by every pass that prunes with a data criterion."""
    return option(getattr(Reconstruction(), name), _RECONSTRUCTION_HELP[name])


def check_criterion(criterion: str, pass_name: str) -> None:
    if criterion not in CRITERIA:
        raise PipelineError(f"pass '{pass_name}': unknown criterion '{criterion}' (known: {', '.join(CRITERIA)})")


def needs_data(criterion: str) -> bool:
    return criterion != "magnitude"


def prune_2d(
    w2: np.ndarray, pattern: Pattern, criterion: str, stats: LayerStats | None, *, damp: float = 0.01, keep_last: int = 0
) -> np.ndarray:
    """The pruned (and for sparsegpt, reconstructed) W2; magnitude when `stats` is None.

    `keep_last` (sparsegpt): trailing columns never pruned (see `with_bias_column`).
    """
    if pattern.is_dense:
        return w2.copy()
    if criterion == "sparsegpt" and stats is not None:
        # Imported on use: sparsegpt needs torch, which `import sparsec` should not load.
        from sparsec.passes.sparsify.sparsegpt import sparsegpt_prune

        return sparsegpt_prune(w2, stats.gram, pattern, damp=damp, keep_last=keep_last)
    if pattern.kind == "nm" and (criterion != "wanda" or stats is None):
        # Magnitude N:M in one native pass where the kernel library is built (numpy below otherwise).
        from sparsec.kernels.packing_nm import prune_nm_native

        pruned = prune_nm_native(w2, pattern.n, pattern.m)
        if pruned is not None:
            return pruned
    scores = np.abs(w2.astype(np.float32, copy=False))  # no copy of a float32 weight before abs
    if criterion == "wanda" and stats is not None:
        scores = scores * np.sqrt(np.maximum(stats.col_sq_mean, 0.0))[None, :].astype(np.float32)
        if pattern.kind == "unstructured":  # Wanda compares weights per output row
            keep = np.stack([pattern.keep_mask(row[None, :])[0] for row in scores])
            return masked(w2, keep)
    return masked(w2, pattern.keep_mask(scores))


def masked(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`w` with the weights outside `keep` set to zero, in `w`'s memory order.

    A multiply by the mask: ~15x faster than `np.where` with a scalar zero or a masked copy
    (0.56 vs 8 ms for 768x3072), which numpy runs element by element. Only a non-finite
    weight (inf * 0 is NaN) needs `np.where`."""
    out = np.multiply(w, keep, dtype=w.dtype)
    if out.dtype.kind == "f":
        if not np.isfinite(out).all():
            return np.where(keep, w, w.dtype.type(0))
        out += w.dtype.type(0)  # -w * 0 is -0.0: pruned weights are +0.0, as np.where made them
    return out


def dense_target(w2: np.ndarray, stats: LayerStats, cross: np.ndarray, damp: float = 0.01, resid: np.ndarray | None = None) -> np.ndarray:
    """The dense weight that best maps the (already perturbed) inputs X~ to the dense outputs X W^T.

    Minimises ||X~ W'^T - X W^T|| with a ridge towards W: W' = W + W (C^T - H~) (H~ + damp I)^-1,
    C = X~^T X. Pruning W' instead of W lets each layer also correct the error that earlier
    pruned layers left in its input; with unchanged inputs (C = H~) it is W itself.
    `resid` (X~^T (R - R~), [K, N]): the target also makes up the error the skip connection
    the output is added to carries (minimises ||X~ W'^T + R~ - (X W^T + R)||).
    """
    # Few [K, K] float64 copies alive at once (each ~1 GB for an 11008-wide LLM FFN input):
    # the difference is formed in place, damping goes on the diagonal, the solve factors in place.
    h = stats.gram.astype(np.float64)
    lam = damp * float(np.mean(np.diag(h))) or 1e-8
    w = w2.astype(np.float64)
    diff = cross.T.astype(np.float64)
    diff -= h
    rhs = w @ diff  # [rows, K]
    del diff
    if resid is not None:
        rhs += resid.T.astype(np.float64)
    h[np.diag_indices_from(h)] += lam
    import scipy.linalg  # on use: 0.12 s off every CLI start

    try:
        correction = scipy.linalg.solve(h, rhs.T, assume_a="pos", overwrite_a=True, overwrite_b=True, check_finite=False).T
    except np.linalg.LinAlgError:  # not positive definite after all (degenerate inputs): a general solve
        h = stats.gram.astype(np.float64)
        h[np.diag_indices_from(h)] += lam
        correction = np.linalg.solve(h, (w @ (cross.T.astype(np.float64) - stats.gram) + (0 if resid is None else resid.T)).T).T
    return (w + correction).astype(w2.dtype)


def with_bias_column(
    w2: np.ndarray, bias: np.ndarray, stats: LayerStats, cross: np.ndarray | None = None, dense_sum: np.ndarray | None = None
) -> tuple[np.ndarray, LayerStats, np.ndarray | None]:
    """The problem with the bias as weight of a constant-1 input column appended last.

    W2a = [W2 | b], Gram [[X^T X, X^T 1], [1^T X, n]]; with `cross` (X~^T X) and the dense
    rows' sum, the cross-Gram [[X~^T X, X~^T 1], [1^T X, n]] for `dense_target`.
    """
    if stats.col_sum is None:
        raise ValueError("bias fitting needs the column sums of the layer inputs")
    k = w2.shape[1]
    w2a = np.concatenate([w2, bias.reshape(-1, 1).astype(w2.dtype)], axis=1)
    g = np.empty((k + 1, k + 1), dtype=np.float64)
    g[:k, :k] = stats.gram
    g[:k, k] = g[k, :k] = stats.col_sum
    g[k, k] = stats.count
    rows_a = None if stats.rows is None else np.hstack([stats.rows, np.ones((stats.rows.shape[0], 1), np.float32)])
    stats_a = LayerStats(g.astype(np.float32), stats.count, np.append(stats.col_sum, stats.count), rows_a)
    cross_a = None
    if cross is not None and dense_sum is not None:
        c = np.empty((k + 1, k + 1), dtype=np.float64)
        c[:k, :k] = cross
        c[:k, k] = stats.col_sum  # X~^T 1
        c[k, :k] = dense_sum  # 1^T X
        c[k, k] = stats.count
        cross_a = c.astype(np.float32)
    return w2a, stats_a, cross_a


# A per-row exact refit costs about rows x kept^3 / 3 flops: ~1e12 for a BERT-base FFN, but
# ~1e13 per projection of a 4096-wide LLM layer (hours on 2 cores): above this it is skipped.
REFIT_MAX_FLOPS = 2e12
REFIT_CHUNK_BYTES = 128 << 20  # sub-Hessians solved at once


def refit_flops(new2: np.ndarray) -> float:
    """The Cholesky work of `refit_kept_weights` on this mask (one factorisation per row)."""
    counts = (new2 != 0).sum(axis=1).astype(np.float64)
    return float(np.sum(counts**3) / 3.0)


def refit_kept_weights(new2: np.ndarray, target2: np.ndarray, stats: LayerStats, *, damp: float = 0.01, keep_last: int = 0, chunk: int = 64) -> np.ndarray:
    """Per output row r, the weights on the kept positions S_r minimising ||X (w_r - t_r)||^2:
    w_S = (H_SS + lam I)^-1 (H t_r)_S with H = X^T X, `target2` t (the dense target) and the
    mask of `new2` (plus the `keep_last` trailing columns, always kept). Zeros stay zeros."""
    import torch  # imported on use, as in sparsegpt.py

    h = torch.from_numpy(stats.gram.astype(np.float64))
    lam = damp * 0.1 * float(torch.diag(h).mean())  # lighter than OBS's damping: only regularises
    rhs_all = torch.from_numpy(target2.astype(np.float64)) @ h  # rows of (H t_r)^T
    keep = new2 != 0
    if keep_last:
        keep[:, -keep_last:] = True
    out = np.zeros_like(new2)
    counts = keep.sum(axis=1)
    for count in np.unique(counts):
        if count == 0:
            continue
        rows = np.flatnonzero(counts == count)
        step = max(1, min(chunk, REFIT_CHUNK_BYTES // (int(count) ** 2 * 8)))  # [step, count, count] float64
        for start in range(0, len(rows), step):
            r = rows[start : start + step]
            idx = torch.from_numpy(np.stack([np.flatnonzero(keep[i]) for i in r]))  # [n, count]
            hs = h[idx[:, :, None], idx[:, None, :]] + lam * torch.eye(int(count), dtype=torch.float64)
            b = torch.gather(rhs_all[torch.from_numpy(r)], 1, idx)
            chol, info = torch.linalg.cholesky_ex(hs)
            if bool((info != 0).any()):
                return new2  # not positive definite: keep the OBS result
            sol = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
            block = np.zeros((len(r), new2.shape[1]), dtype=np.float64)
            np.put_along_axis(block, idx.numpy(), sol.numpy(), axis=1)
            out[r] = block.astype(new2.dtype)
    return out


def output_error(w2: np.ndarray, new2: np.ndarray, stats: LayerStats) -> float:
    """Relative layer-output error ||X (W - W')^T|| / ||X W^T||: from the kept rows when the
    statistics have them (count*K flops per output row), else from the Gram matrix (K*K)."""
    if stats.rows is not None and stats.rows.shape[1] == w2.shape[1]:
        x = stats.rows
        num = float(np.sum(np.square(x @ (w2 - new2).astype(np.float32, copy=False).T, dtype=np.float64)))
        den = float(np.sum(np.square(x @ w2.astype(np.float32, copy=False).T, dtype=np.float64)))
        return float(np.sqrt(num / den)) if den > 0 else 0.0
    d = (w2 - new2).astype(np.float64)
    w = w2.astype(np.float64)
    g = stats.gram.astype(np.float64)
    # sum_ij (D G)_ij D_ij: a matmul then an elementwise product (einsum here would loop naively).
    num = float(np.sum((d @ g) * d))
    den = float(np.sum((w @ g) * w))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0
