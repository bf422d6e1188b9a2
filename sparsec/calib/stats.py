"""Layer statistics on calibration data: the input Gram matrix X2^T X2 of every weight layer.

Works on the IR of any ONNX graph (through `CalibrationRunner`). Grams of the dense model are
cached in memory per (model hash, data hash). `PairedStats` pair the inputs of a layer under
pruned weights with the dense ones, row by row, for reconstruction towards the dense model.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
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
    # The rows themselves [count, K] when there are few of them (see `RowKeeper`): quantities
    # like ||X D^T|| then cost count*K per output row instead of K*K through the Gram.
    rows: np.ndarray | None = None

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
    kept = RowKeeper()
    for rows_by_layer in batches:
        products = _SharedProducts()
        for name, x2 in rows_by_layer.items():
            g, _ = products.get(x2, x2, lambda x=x2: x.T @ x)
            s = x2.sum(axis=0, dtype=np.float64)
            if name in grams:
                grams[name] += g
                sums[name] += s
            else:
                grams[name], sums[name] = g.astype(np.float32), s
            counts[name] = counts.get(name, 0) + x2.shape[0]
            kept.add(name, x2)
    return {name: LayerStats(grams[name], counts[name], sums[name], kept.rows(name)) for name in grams}


class _SharedProducts:
    """Per batch: layers that read the same activation (q/k/v, gate/up) share one product."""

    def __init__(self) -> None:
        self._done: dict[tuple, np.ndarray] = {}

    def get(self, a: np.ndarray, b: np.ndarray, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """(the product, whether it was computed by this call: only then may it be adopted
        as an accumulator; a shared one must be copied first)."""
        key = (_identity(a), _identity(b))
        if key in self._done:
            return self._done[key], False
        self._done[key] = compute()
        return self._done[key], True


def _identity(x: np.ndarray) -> tuple:
    return (x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str)


class RowKeeper:
    """Keeps each layer's input rows while they are few: at most half the input width (below
    that, row-based error measures beat Gram-based ones) and `max_bytes` per layer."""

    def __init__(self, max_bytes: int = 1 << 28) -> None:
        self.max_bytes = max_bytes
        self._parts: dict[str, list[np.ndarray] | None] = {}

    def add(self, name: str, x2: np.ndarray) -> None:
        parts = self._parts.setdefault(name, [])
        if parts is None:
            return
        count = sum(p.shape[0] for p in parts) + x2.shape[0]
        if 2 * count > x2.shape[1] or count * x2.shape[1] * 4 > self.max_bytes:
            self._parts[name] = None  # too many: the Gram is the cheaper summary
            return
        parts.append(np.array(x2, dtype=np.float32))

    def rows(self, name: str) -> np.ndarray | None:
        parts = self._parts.get(name)
        return np.concatenate(parts, axis=0) if parts else None


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
    kept = RowKeeper()
    for dense_rows, pruned_rows in pairs:
        products = _SharedProducts()
        for name, xp in pruned_rows.items():
            xd = dense_rows[name]
            g, g_new = products.get(xp, xp, lambda x=xp: (x.T @ x).astype(np.float32))
            c, c_new = products.get(xp, xd, lambda x=xp, y=xd: (x.T @ y).astype(np.float32))
            kept.add(name, xp)
            s, ds = xp.sum(axis=0, dtype=np.float64), xd.sum(axis=0, dtype=np.float64)
            if name in grams:
                grams[name] += g
                cross[name] += c
                sums[name] += s
                dsums[name] += ds
            else:
                grams[name], cross[name] = (g if g_new else g.copy()), (c if c_new else c.copy())
                sums[name], dsums[name] = s, ds
            counts[name] = counts.get(name, 0) + xp.shape[0]
    return {name: PairedStats(LayerStats(grams[name], counts[name], sums[name], kept.rows(name)), cross[name], dsums[name]) for name in grams}


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
