"""Apply a per-layer plan (layer -> pattern) with a criterion, sequentially where it matters.

Data-driven criteria see the inputs each layer will really get: layers are processed stage
by stage (`layer_stages`), and the inputs of a stage are recollected with every earlier
stage already pruned (and, for sparsegpt, reconstructed), as in SparseGPT's sequential mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from sparsec.activations import ActivationRunner
from sparsec.calibration import CalibrationData
from sparsec.layer_view import LayerView, view_of
from sparsec.layers import Layer
from sparsec.passes.analysis.layer_stats import (
    LayerStats,
    accumulate,
    accumulate_paired,
    dense_stats,
    layer_stages,
)
from sparsec.passes.sparsify.criteria import dense_target, needs_data, output_error, prune_2d
from sparsec.passes.sparsify.marking import mark_pattern
from sparsec.passes.sparsify.nm_sparsity import skip_reason
from sparsec.passes.sparsify.patterns import Pattern
from sparsec.pm.context import PassContext

log = logging.getLogger("sparsec")


@dataclass(frozen=True)
class Outcome:
    layer: str
    weight: str
    pattern: str
    criterion: str  # the criterion actually used (magnitude when the layer has no input view)
    weight_rel_error: float
    output_rel_error: float | None  # ||X dW^T|| / ||X W^T|| on the inputs the layer saw
    note: str | None = None


def pattern_skip_reason(layer: Layer, pattern: Pattern, min_params: int) -> str | None:
    """Why `layer` cannot take `pattern`, or None."""
    reason = skip_reason(layer, 1, pattern.col_multiple, min_params)
    if reason is not None:
        return reason
    view = view_of(layer)
    w2 = view.weight2d(layer.weight.const_value.numpy())
    if pattern.kind == "block" and pattern.block[0] > 1 and layer.node.op_type not in ("Gemm", "MatMul"):
        return "blocks over several output rows are defined for MatMul/Gemm weights only"
    return pattern.skip_reason(*w2.shape)


def prune_layer(
    view: LayerView, w: np.ndarray, pattern: Pattern, criterion: str, stats: LayerStats | None, cross: np.ndarray | None = None
) -> tuple[np.ndarray, Outcome]:
    w2 = view.weight2d(w)
    target2 = dense_target(w2, stats, cross) if (cross is not None and stats is not None and criterion == "sparsegpt") else w2
    used = criterion if (stats is not None or not needs_data(criterion)) else "magnitude"
    new2 = prune_2d(target2, pattern, used, stats)
    new = view.weight_back(new2, w.shape).astype(w.dtype, copy=False)
    werr = float(np.linalg.norm((w2 - new2).astype(np.float64)) / max(np.linalg.norm(w2.astype(np.float64)), 1e-30))
    oerr = output_error(w2, new2, stats) if stats is not None else None
    note = None if used == criterion else f"{criterion} needs an input view ({view.reason}); used magnitude"
    return new, Outcome(view.name, view.layer.weight.name, str(pattern), used, werr, oerr, note)


def apply_plan(
    model: ir.Model,
    plan: Sequence[tuple[Layer, Pattern]],
    criterion: str,
    calib: CalibrationData | None,
    *,
    sequential: bool = True,
    correct: bool = True,
    threads: int = 2,
    progress: bool = True,
) -> list[Outcome]:
    """Prune every (layer, pattern) of `plan` in `model` (in place); returns what was done.

    `correct` (sparsegpt, sequential): reconstruct towards the dense model's layer outputs
    rather than the layer's own dense output on perturbed inputs (see `dense_target`).
    """
    work = [(view_of(layer), pattern) for layer, pattern in plan if not pattern.is_dense]
    if not work:
        return []
    patterns = {v.name: p for v, p in work}
    views = [v for v, _ in work]
    new_weights: dict[str, np.ndarray] = {}
    outcomes: dict[str, Outcome] = {}
    data_views = [v for v in views if v.input_name is not None] if needs_data(criterion) and calib is not None else []
    if data_views and sequential:
        runner = ActivationRunner(model, views, calib, threads)  # type: ignore[arg-type]
        stages = layer_stages(model, views)
        for stage in tqdm(stages, desc=f"{criterion} (sequential)", unit="stage", disable=not progress, leave=False):
            if correct and new_weights:
                paired = accumulate_paired(runner, stage, new_weights)
                stats, cross = {k: v[0] for k, v in paired.items()}, {k: v[1] for k, v in paired.items()}
            else:
                stats, cross = accumulate(runner, stage, new_weights), {}
            for view in stage:
                w = view.layer.weight.const_value.numpy()
                new_weights[view.layer.weight.name], outcomes[view.name] = prune_layer(
                    view, w, patterns[view.name], criterion, stats.get(view.name), cross.get(view.name)
                )
    else:
        stats = dense_stats(model, data_views, calib, threads=threads) if data_views else {}  # type: ignore[arg-type]
        for view in tqdm(views, desc=criterion, unit="layer", disable=not progress, leave=False):
            w = view.layer.weight.const_value.numpy()
            new_weights[view.layer.weight.name], outcomes[view.name] = prune_layer(
                view, w, patterns[view.name], criterion, stats.get(view.name)
            )
    for view in views:
        mark_pattern(model, view.layer, new_weights[view.layer.weight.name], patterns[view.name])
    return [outcomes[v.name] for v in views]


def record_outcomes(
    ctx: PassContext, pass_name: str, layers: Sequence[Layer], outcomes: Sequence[Outcome], *, with_axis: bool
) -> tuple[int, int]:
    """Record one decision per pruned layer; returns (parameters pruned, zeros now held)."""
    params = zeros = 0
    for layer, o in zip(layers, outcomes, strict=True):
        w = layer.weight.const_value.numpy()
        params += w.size
        zeros += int(np.count_nonzero(w == 0))
        axis = {"axis": layer.reduction_axis} if with_axis else {}
        ctx.record(
            pass_name, o.layer, weight=o.weight, op_type=layer.node.op_type, decision=o.pattern, **axis,
            criterion=o.criterion, weight_rel_error=round(o.weight_rel_error, 6),
            output_rel_error=None if o.output_rel_error is None else round(o.output_rel_error, 6),
            **({"note": o.note} if o.note else {}),
        )
    return params, zeros
