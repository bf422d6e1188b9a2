"""Layer statistics on calibration data: the input Gram matrix X2^T X2 of every weight layer.

Works on the IR of any ONNX graph (through `CalibrationRunner`). Grams of the dense model are
cached in memory per (model hash, data hash). `PairedStats` pair the inputs of a layer under
pruned weights with the dense ones, row by row, for reconstruction towards the dense model.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.runner import CalibrationRunner
from sparsec.errors import OptionError
from sparsec.ir.io import to_proto
from sparsec.layer_view import LayerView
from sparsec.pm.context import PassContext

_CACHE: OrderedDict[tuple[str, str], dict[str, LayerStats]] = OrderedDict()
_CACHE_ENTRIES = 2  # Grams of a BERT-base take ~0.5 GB: keep few


@dataclass(frozen=True)
class LayerStats:
    gram: np.ndarray  # [K, K] float32, sum over calibration rows of x x^T
    count: int  # calibration rows
    col_sum: np.ndarray | None = None  # [K] float64, sum over calibration rows of x (for bias fitting)

    @property
    def col_sq_mean(self) -> np.ndarray:
        """Mean of x_j^2 per input column (Wanda's ||x_j||^2 / rows)."""
        return np.diag(self.gram).astype(np.float64) / max(self.count, 1)


def accumulate(runner: CalibrationRunner, views: Sequence[LayerView], weights: dict[str, np.ndarray] | None = None) -> dict[str, LayerStats]:
    return accumulate_rows(runner.layer_inputs(views, weights))


def accumulate_rows(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, LayerStats]:
    """Grams (and column sums) from per-batch layer name -> X2 rows."""
    grams: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for rows_by_layer in batches:
        for name, x2 in rows_by_layer.items():
            g = x2.T @ x2
            s = x2.sum(axis=0, dtype=np.float64)
            if name in grams:
                grams[name] += g
                sums[name] += s
            else:
                grams[name], sums[name] = g.astype(np.float32), s
            counts[name] = counts.get(name, 0) + x2.shape[0]
    return {name: LayerStats(grams[name], counts[name], sums[name]) for name in grams}


@dataclass(frozen=True)
class PairedStats:
    """Statistics of a layer's inputs X~ under pruned weights, paired row by row with the dense X."""

    stats: LayerStats  # of X~
    cross: np.ndarray  # X~^T X [K, K]
    dense_sum: np.ndarray  # sum of X's rows [K]
    # Where the layer's output is added to a skip connection R: X~^T (R - R~) [K, N] and the
    # sum of (R - R~)'s rows [N], the error the skip carries around the layer.
    resid_cross: np.ndarray | None = None
    resid_sum: np.ndarray | None = None


def accumulate_paired(
    runner: CalibrationRunner, views: Sequence[LayerView], weights: dict[str, np.ndarray]
) -> dict[str, PairedStats]:
    """Grams of the inputs under `weights` (X~) and cross-Grams X~^T X with the dense inputs X.

    Both runs see the same calibration batches in the same order, so rows pair up.
    """
    return accumulate_paired_rows(zip(runner.layer_inputs(views, None), runner.layer_inputs(views, weights), strict=True))


def accumulate_paired_rows(pairs: Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> dict[str, PairedStats]:
    """Paired statistics from per-batch (dense rows, pruned rows), each layer name -> X2 rows."""
    grams: dict[str, np.ndarray] = {}
    cross: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    dsums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for dense_rows, pruned_rows in pairs:
        for name, xp in pruned_rows.items():
            xd = dense_rows[name]
            g, c = (xp.T @ xp).astype(np.float32), (xp.T @ xd).astype(np.float32)
            s, ds = xp.sum(axis=0, dtype=np.float64), xd.sum(axis=0, dtype=np.float64)
            if name in grams:
                grams[name] += g
                cross[name] += c
                sums[name] += s
                dsums[name] += ds
            else:
                grams[name], cross[name], sums[name], dsums[name] = g, c, s, ds
            counts[name] = counts.get(name, 0) + xp.shape[0]
    return {name: PairedStats(LayerStats(grams[name], counts[name], sums[name]), cross[name], dsums[name]) for name in grams}


def model_digest(model: ir.Model) -> str:
    return hashlib.sha256(to_proto(model).SerializeToString(deterministic=True)).hexdigest()


def dense_stats(model: ir.Model, views: Sequence[LayerView], calib: CalibrationData, *, threads: int = 2) -> dict[str, LayerStats]:
    """Grams of the model as it stands (cached per model and data hash)."""
    key = (model_digest(model), calib.digest())
    cached = _CACHE.get(key)
    wanted = {v.name for v in views if v.input_name is not None}
    if cached is not None and wanted <= cached.keys():
        _CACHE.move_to_end(key)
        return {k: cached[k] for k in wanted}
    runner = CalibrationRunner(model, calib, views=views, threads=threads)
    stats = accumulate(runner, views)
    _CACHE[key] = {**(cached or {}), **stats}
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return stats


def require_calibration(ctx: PassContext, what: str) -> CalibrationData:
    if ctx.calibration is None:
        raise OptionError(f"{what} needs calibration data (CLI: --calib FILE.npz; API: PassContext(calibration=...))")
    calib = CalibrationData.load(ctx.calibration)
    ctx.calibration = calib
    return calib
