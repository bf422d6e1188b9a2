"""The `layer-statistics` analysis (input Grams of every weight layer, `sparsec.calib.stats`)
and `layer_stages`, which orders layers so that sequential reconstruction can recollect the
inputs of each stage after the stages before it are pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from sparsec.calib.stats import LayerStats, dense_stats, require_calibration
from sparsec.layer_view import LayerView, view_of
from sparsec.layers import find_layers
from sparsec.pm.analysis import Analysis
from sparsec.pm.context import PassContext


def layer_stages(model: ir.Model, views: Sequence[LayerView]) -> list[list[LayerView]]:
    """Group layers into stages: a layer's stage is one more than that of any layer upstream.

    Layers of one stage (e.g. the Q/K/V projections of a block) don't feed each other, so
    their inputs can be collected in one run once all earlier stages are pruned.
    """
    by_node = {id(v.layer.node): v for v in views}
    depth: dict[int, int] = {}
    stage_of: dict[int, int] = {}
    for node in model.graph:
        d = max((depth.get(id(v), -1) for v in node.inputs if v is not None), default=-1)
        if id(node) in by_node:
            d += 1
            stage_of[id(node)] = d
        for out in node.outputs:
            depth[id(out)] = d
    stages: dict[int, list[LayerView]] = {}
    for v in views:
        stages.setdefault(stage_of[id(v.layer.node)], []).append(v)
    return [stages[k] for k in sorted(stages)]


class LayerStatistics(Analysis):
    """Input Grams of every weight layer of the current model on `ctx.calibration`."""

    name = "layer-statistics"

    def compute(self, model: ir.Model, ctx: PassContext) -> dict[str, LayerStats]:
        calib = require_calibration(ctx, "layer statistics")
        views = [view_of(layer) for layer in find_layers(model)]
        return dense_stats(model, views, calib)
