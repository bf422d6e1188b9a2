"""Crop reconstruction: refit the layers that consume cropped channels (no training).

After a crop, a layer whose *reduction* axis lost channels (an attention output
projection after a head crop, an FFN down projection after a width crop, the next conv after
a channel crop) sees fewer inputs. On calibration data we refit it so that it reproduces the
*dense* model's output from the kept inputs: ridge-regularised least squares

    [W', b'] = argmin || [X~, 1] [W'; b'] - (X W + b) ||^2 + damp * mean(diag(G)) * ||W'||^2

with X~ the layer's input in the cropped model (earlier refits already applied, layers taken
in graph order) and X W + b its dense output. With `target="residual"`, where the layer's
output (after its bias) is added to a residual stream r, the target also takes over the
error the crop left upstream in that stream: X W + b + r - r~ (r~: the stream in the
cropped model), so each refit repairs the sum the next block reads, not just its own part. The intercept is the FLAP-style bias
compensation: the removed channels' mean contribution moves into the bias (only where the
layer has a bias of its own to absorb it). Output channels the crop also removed are left out
of the target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.runner import CalibrationRunner
from sparsec.layer_view import LayerView, bias_of, view_of
from sparsec.layers import Layer, find_layers

log = logging.getLogger("sparsec.crop")


@dataclass(frozen=True)
class Refit:
    layer: str
    weight: str
    bias: str | None
    inputs_kept: int
    inputs_dense: int
    error_before: float  # relative L2 error of the layer's output vs dense, on calibration rows
    error_after: float
    damp: float = 0.0  # the ridge damping used (chosen by cross-validation when asked for 0)

    def to_dict(self) -> dict:
        return {"weight": self.weight, "bias": self.bias, "inputs_kept": self.inputs_kept, "damp": self.damp,
                "inputs_dense": self.inputs_dense, "rel_error_before": round(self.error_before, 6),
                "rel_error_after": round(self.error_after, 6)}


def consumers(model: ir.Model, removed: dict[tuple[str, int], np.ndarray]) -> list[tuple[Layer, LayerView]]:
    """Layers (with an input view) whose weight lost indices on its reduction axis, in graph order."""
    out = []
    for layer in find_layers(model):
        w = layer.weight
        rank = len(w.const_value.shape) if w.const_value is not None else 0
        axis = layer.reduction_axis % rank if rank else 0
        if (w.name, axis) not in removed:
            continue
        view = view_of(layer)
        if view.input_name is None:
            log.info("crop reconstruction: %s skipped (%s)", layer.name, view.reason)
            continue
        out.append((layer, view))
    return out


def residual_of(model: ir.Model, layer: Layer) -> str | None:
    """The residual stream added to the layer's output: the other operand of the first
    two-activation Add after it (through at most one bias Add), else None."""
    value = layer.node.outputs[0]
    for _ in range(2):
        uses = list(value.uses())
        if len(uses) != 1 or uses[0].node.op_type != "Add":
            return None
        add = uses[0].node
        other = add.inputs[1 - uses[0].idx]
        if other is None:
            return None
        if other.const_value is None and not other.is_initializer():
            return other.name
        value = add.outputs[0]
    return None


def _output_rows(view: LayerView, calib: CalibrationData, batch: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    node = view.layer.node
    if node.op_type == "Conv":
        return np.moveaxis(np.asarray(y, dtype=np.float32), 1, -1).reshape(-1, y.shape[1])
    if node.op_type == "MatMul":
        rows = calib.select_rows(batch, y)
        if rows is not None:
            return np.asarray(rows, dtype=np.float32)
    return np.asarray(y, dtype=np.float32).reshape(-1, y.shape[-1])


def reconstruct_consumers(
    dense: ir.Model,
    cropped: ir.Model,
    removed: dict[tuple[str, int], np.ndarray],
    calib: CalibrationData,
    *,
    damp: float = 0.01,  # 0: chosen per layer by 2-fold cross-validation over DAMP_GRID
    target: str = "layer",
    threads: int = 2,
) -> list[Refit]:
    """Refit, in place in `cropped`, every layer consuming cropped channels (see module doc)."""
    targets = consumers(cropped, removed)
    if not targets:
        return []
    dense_layers = {layer.weight.name: layer for layer in find_layers(dense)}
    # The dense outputs (+ bias) of every consumer, real rows only, in one pass.
    dense_runner = CalibrationRunner(dense, calib, threads=threads)
    out_names = [dense_layers[layer.weight.name].node.outputs[0].name for layer, _ in targets]
    residuals = {name: r for (layer, _), name in zip(targets, out_names, strict=True)
                 if target == "residual" and (r := residual_of(cropped, layer)) is not None}
    dense_rows: dict[str, list[np.ndarray]] = {name: [] for name in out_names}
    dense_residual: dict[str, list[np.ndarray]] = {name: [] for name in residuals}
    wanted = out_names + sorted(set(residuals.values()))
    for batch, values in zip(dense_runner.batches(), dense_runner.values(wanted), strict=True):
        for (_layer, view), name in zip(targets, out_names, strict=True):
            dense_rows[name].append(_output_rows(view, calib, batch, values[name]))
            if name in residuals:
                dense_residual[name].append(_output_rows(view, calib, batch, values[residuals[name]]))
    params = sorted({layer.weight.name for layer, _ in targets} | {b.name for _, v in targets if (b := bias_of(v.layer)) is not None})
    runner = CalibrationRunner(cropped, calib, params=params, threads=threads)
    weights: dict[str, np.ndarray] = {}
    refits = []
    for (layer, view), out_name in zip(targets, out_names, strict=True):
        w_name = layer.weight.name
        bias = bias_of(layer)
        dense_bias = bias_of(dense_layers[w_name])
        w_old = layer.weight.const_value.numpy()
        w2 = view.weight2d(w_old).astype(np.float64)  # [rows, K~]
        rows = w2.shape[0]
        kept_out = _kept(removed.get((w_name, _output_axis(layer, w_old.ndim))), dense_layers[w_name], rows)
        b_dense = dense_bias.const_value.numpy().astype(np.float64)[kept_out] if dense_bias is not None else 0.0
        b_old = bias.const_value.numpy().astype(np.float64) if bias is not None else None
        k = w2.shape[1] + (1 if bias is not None else 0)
        gram, cross, t_sq, err_before, n = np.zeros((k, k)), np.zeros((k, rows)), 0.0, 0.0, 0
        folds = [_Fold(k, rows), _Fold(k, rows)]  # alternate batches, for choosing the damping
        residual = residuals.get(out_name)
        names = [view.input_name] + ([residual] if residual is not None else [])
        for i, (batch, values, y_rows) in enumerate(zip(runner.batches(), runner.values(names, weights), dense_rows[out_name], strict=True)):  # type: ignore[arg-type]
            x = runner.view_rows(view, batch, values[view.input_name]).astype(np.float64)
            goal = y_rows[:, kept_out].astype(np.float64) + b_dense
            if residual is not None:
                now_r = _output_rows(view, calib, batch, values[residual])
                if now_r.shape == dense_residual[out_name][i].shape == goal.shape:
                    goal += dense_residual[out_name][i].astype(np.float64) - now_r
            if bias is not None:
                x = np.hstack([x, np.ones((len(x), 1))])
            g, c, tq = x.T @ x, x.T @ goal, float((goal**2).sum())
            gram += g
            cross += c
            folds[i % 2].add(g, c, tq)
            now = x[:, : w2.shape[1]] @ w2.T + (b_old if b_old is not None else 0.0)
            err_before += float(((now - goal) ** 2).sum())
            t_sq += tq
            n += len(x)
        if n == 0:
            continue
        chosen = damp if damp > 0 else _cross_validated_damp(folds)
        solution = _ridge(gram, cross, chosen)  # [K~(+1), rows]
        w_new, b_new = solution[: w2.shape[1]].T, (solution[-1] if bias is not None else None)
        err_after = float(np.trace(solution.T @ gram @ solution) - 2 * np.sum(solution * cross) + t_sq)
        if err_after >= err_before:  # the ridge can only lose on rank-poor data: keep the crop as is
            log.info("crop reconstruction: %s not improved (%.4g >= %.4g), kept", layer.name, err_after, err_before)
            refits.append(Refit(layer.name, w_name, bias.name if bias is not None else None, w2.shape[1],
                                int(dense_layers[w_name].weight.const_value.shape[layer.reduction_axis]),
                                _rel(err_before, t_sq), _rel(err_before, t_sq), chosen))
            continue
        weights[w_name] = view.weight_back(w_new.astype(np.float32), w_old.shape)
        if bias is not None and b_new is not None:
            weights[bias.name] = b_new.astype(np.float32)
        refits.append(Refit(layer.name, w_name, bias.name if bias is not None else None, w2.shape[1],
                            int(dense_layers[w_name].weight.const_value.shape[layer.reduction_axis]),
                            _rel(err_before, t_sq), _rel(err_after, t_sq), chosen))
    for name, array in weights.items():
        cropped.graph.initializers[name].const_value = ir.tensor(np.ascontiguousarray(array), name=name)
    return refits


DAMP_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class _Fold:
    """Normal equations of half of the calibration batches."""

    def __init__(self, k: int, rows: int) -> None:
        self.gram, self.cross, self.t_sq = np.zeros((k, k)), np.zeros((k, rows)), 0.0

    def add(self, g: np.ndarray, c: np.ndarray, t_sq: float) -> None:
        self.gram += g
        self.cross += c
        self.t_sq += t_sq

    def error(self, solution: np.ndarray) -> float:
        return float(np.sum(solution * (self.gram @ solution)) - 2 * np.sum(solution * self.cross) + self.t_sq)


def _ridge(gram: np.ndarray, cross: np.ndarray, damp: float) -> np.ndarray:
    lam = damp * float(np.mean(np.diag(gram))) + 1e-8
    return np.linalg.solve(gram + lam * np.eye(len(gram)), cross)


def _cross_validated_damp(folds: list[_Fold]) -> float:
    """The damping whose fit on one half of the batches predicts the other half best (both ways)."""
    if any(f.t_sq == 0 for f in folds):
        return 0.01
    a, b = folds
    errors = [b.error(_ridge(a.gram, a.cross, d)) + a.error(_ridge(b.gram, b.cross, d)) for d in DAMP_GRID]
    return DAMP_GRID[int(np.argmin(errors))]


def _rel(err: float, t_sq: float) -> float:
    return float(np.sqrt(max(err, 0.0) / t_sq)) if t_sq > 0 else 0.0


def _output_axis(layer: Layer, rank: int) -> int:
    """The stored weight's output-channel axis (the one W2's rows come from)."""
    if layer.node.op_type == "Conv":
        return 0
    return (rank - 1) if layer.reduction_axis % rank == rank - 2 else rank - 2


def _kept(gone: np.ndarray | None, dense_layer: Layer, rows: int) -> np.ndarray:
    if gone is None:
        return np.arange(rows)
    w = dense_layer.weight.const_value
    size = int(np.prod(w.shape)) // int(w.shape[dense_layer.reduction_axis]) if dense_layer.node.op_type != "Conv" else int(w.shape[0])
    return np.setdiff1d(np.arange(size), gone)


__all__ = ["Refit", "consumers", "reconstruct_consumers"]
