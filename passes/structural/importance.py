"""Channel importance: which channels of a group go first (the lowest scores).

`l1`/`l2`: norms of every parameter slice the channel owns (its rows, columns, biases,
norm parameters, and those of the channels derived from it, e.g. a head's Q/K/V rows and
O columns), each parameter normalised by its mean so no single tensor dominates.
`bn`: the |scale| of BatchNormalization layers in the channel (l2 where there is none).
`activation`, `obs`: calibration-based, see calibrated.py and obs.py.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.errors import PipelineError
from sparsec.passes.structural.groups import DependencyGraph

CRITERIA = ("l1", "l2", "bn", "activation", "obs")
CALIBRATED_CRITERIA = ("activation", "obs")


def _param_axes(dg: DependencyGraph, model: ir.Model) -> list[tuple[int, np.ndarray]]:
    inits = model.graph.initializers
    out = []
    for a, info in enumerate(dg.builder.axes):
        v = inits.get(info.value) if info.value is not None else None
        if v is None or v.const_value is None or not v.const_value.dtype.is_floating_point():
            continue
        if info.size > 1:
            out.append((a, v.const_value.numpy()))
    return out


def element_scores(dg: DependencyGraph, model: ir.Model, criterion: str) -> np.ndarray:
    scores = np.zeros(len(dg.labels), dtype=np.float64)
    bn_scales = {n.inputs[1].name for n in model.graph if n.op_type == "BatchNormalization"}
    for a, w in _param_axes(dg, model):
        info = dg.builder.axes[a]
        if criterion == "bn" and info.value not in bn_scales:
            continue
        moved = np.moveaxis(w.astype(np.float32, copy=False), info.axis, 0).reshape(info.size, -1)
        s = (np.abs(moved).sum(axis=1) if criterion in ("l1", "bn") else np.sqrt((moved**2).sum(axis=1))).astype(np.float64)
        mean = s.mean()
        scores[info.base : info.base + info.size] = s / mean if mean > 0 else s
    return scores


def channel_scores(dg: DependencyGraph, elem_scores: np.ndarray) -> np.ndarray:
    """Per channel: its own score plus that of every channel derived from it."""
    own = np.bincount(dg.labels, weights=elem_scores, minlength=dg.n_channels)
    total = own.copy()
    for p in dg.products:
        flat_own = own[dg.labels[p.flat]]
        for f in p.factors:
            np.add.at(total, dg.labels[f], flat_own)
    return total


def importance(dg: DependencyGraph, model: ir.Model, criterion: str = "l2") -> np.ndarray:
    if criterion not in ("l1", "l2", "bn"):
        raise PipelineError(f"criterion '{criterion}' needs calibration data or is unknown (known: {', '.join(CRITERIA)})")
    scores = channel_scores(dg, element_scores(dg, model, criterion))
    if criterion == "bn":
        # Groups without BatchNorm fall back to l2.
        l2 = channel_scores(dg, element_scores(dg, model, "l2"))
        for g in dg.groups:
            if not np.any(scores[g.classes]):
                scores[g.classes] = l2[g.classes]
    return scores
