"""The `obs` crop criterion: which inputs a consumer layer can lose with the least output error.

For a layer `Y = X W` (X: its calibration input rows, H = X^T X) the Optimal Brain Surgeon
gives, for removing input k and refitting the others optimally (what crop reconstruction
then does), the output error `||W_k||^2 / [H^-1]_kk`. Removing one input at a time and
updating H^-1 and W after each (the structured OBS of ZipLM / SparseGPT's column loop)
orders the inputs from least to most missed: a channel's score is its position in that order
(0 = goes first), normalised by the axis length. Activation norms (`activation`) ignore that
the other inputs can take over a removed one's part; OBS measures exactly that.

Only contracted axes that a weight layer reduces over get OBS scores (FFN down projections,
attention output projections over heads x head dims, the next conv). Channels without such a
consumer (query/key head dims, contracted only by Q K^T) keep the activation criterion's
score, scaled far below the OBS scores' range so it only orders them among themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.runner import CalibrationRunner
from sparsec.layer_view import LayerView, view_of
from sparsec.layers import find_layers
from sparsec.passes.structural.groups import DependencyGraph

log = logging.getLogger("sparsec.crop")
DAMP = 0.01  # relative to the mean diagonal of H, as SparseGPT
TIE_BREAK = 1e-6  # weight of the activation scores where OBS scores exist


def obs_order(gram: np.ndarray, w2: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Position of every input in the greedy OBS removal order (0 = least missed).

    `gram`: H [K, K] of the layer's input rows; `w2`: the weight as [rows, K]."""
    k = gram.shape[0]
    h = gram.astype(np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h += (damp * float(np.mean(np.diag(h))) + 1e-12) * np.eye(k)
    hinv = np.linalg.inv(h)
    w = w2.astype(np.float64, copy=True).T  # [K, rows]
    order = np.empty(k, dtype=np.int64)
    alive = np.ones(k, dtype=bool)
    for step in range(k):
        d = np.diag(hinv)
        err = np.where(alive, (w**2).sum(axis=1) / np.maximum(d, 1e-30), np.inf)
        j = int(np.argmin(err))
        order[step] = j
        alive[j] = False
        if step == k - 1:
            break
        col = hinv[:, j].copy()
        # Compensate the remaining inputs for the lost one, then drop it from H^-1.
        w -= np.outer(col / col[j], w[j])
        hinv -= np.outer(col, col) / col[j]
        w[j] = 0.0
        hinv[j, :] = 0.0
        hinv[:, j] = 0.0
        hinv[j, j] = 1.0
    position = np.empty(k, dtype=np.float64)
    position[order] = np.arange(k)
    return position / k


def prunable_elements(dg: DependencyGraph) -> np.ndarray:
    """Elements (bool per element) of channels a prunable group can remove, derived ones included."""
    labels = np.concatenate([g.classes for g in dg.prunable_groups()] or [np.zeros(0, dtype=np.int64)])
    mask = np.isin(dg.labels, labels)
    for p in dg.products:
        for f in p.factors:
            mask[p.flat] |= np.isin(dg.labels[f], labels)
    return mask


# The allocation may run a few times on one plan (crop_plan's review): score once per graph
# and calibration set. Keyed by the data's source and size, not the object: a calibration
# file is loaded anew for every allocation.
_LAST: list[tuple[DependencyGraph, tuple[str, int], np.ndarray]] = []


def obs_element_scores(dg: DependencyGraph, model: ir.Model, calib: CalibrationData,
                       fallback: Callable[[], np.ndarray], threads: int = 2) -> np.ndarray:
    """Per element of `dg`: OBS positions on weight layers' reduction axes; `fallback()` (the
    activation element scores, computed only on a miss) x TIE_BREAK elsewhere (module doc)."""
    key = (calib.source, calib.num_samples)
    if _LAST and _LAST[0][0] is dg and _LAST[0][1] == key:
        return _LAST[0][2].copy()
    scores = _obs_element_scores(dg, model, calib, fallback(), threads)
    _LAST[:] = [(dg, key, scores)]
    return scores.copy()


def _obs_element_scores(dg: DependencyGraph, model: ir.Model, calib: CalibrationData, fallback: np.ndarray,
                        threads: int) -> np.ndarray:
    prunable = prunable_elements(dg)
    axis_of = {(info.value, info.axis): a for a, info in enumerate(dg.builder.axes) if info.value is not None}
    targets: list[tuple[LayerView, int]] = []
    for layer in find_layers(model):
        w = layer.weight.const_value
        if w is None:
            continue
        a = axis_of.get((layer.weight.name, layer.reduction_axis % len(w.shape)))
        info = dg.builder.axes[a] if a is not None else None
        if info is None or info.size < 2 or not prunable[info.base : info.base + info.size].any():
            continue
        view = view_of(layer)
        if view.input_name is None or layer.node.op_type == "Conv":
            continue  # im2col columns are (kh, kw, channel), not channels: leave convs to activation
        targets.append((view, a))
    scores = fallback * TIE_BREAK
    if not targets:
        return scores
    runner = CalibrationRunner(model, calib, threads=threads)
    grams = {v.input_name: None for v, _ in targets}
    for batch, values in zip(runner.batches(), runner.values(list(grams)), strict=True):
        for view, _ in targets:
            name = view.input_name
            x = runner.view_rows(view, batch, values[name]).astype(np.float64)
            g = x.T @ x
            grams[name] = g if grams[name] is None else grams[name] + g
    for view, a in targets:
        info = dg.builder.axes[a]
        w2 = view.weight2d(view.layer.weight.const_value.numpy())
        gram = grams[view.input_name]
        if gram is None or gram.shape[0] != info.size:
            continue
        scores[info.base : info.base + info.size] += obs_order(gram, w2)
    log.info("crop criterion obs: %d consumer layers scored", len(targets))
    return scores


__all__ = ["obs_element_scores", "obs_order"]
