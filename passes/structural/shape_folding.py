"""Fold shape computations into constants before the dependency-groups analysis.

Exporters often compute sizes at run time from `Shape`: the legacy torch exporter turns
`x.chunk(2, dim=1)` into `Slice(x, 0, Shape(x)[1] / 2)` and `x.view(b, 2, c // 2, h, w)` into
a `Reshape` whose shape is a `Concat` of `Gather(Shape(x))`s; the dynamo exporter without its
optimizer does the same for every `view`. A coupling rule cannot map such a node, and the
`Shape` pins every axis it reads, so channels that are perfectly croppable look pinned (and a
crop would not be exact either way: the computed size would follow the cropped tensor, not
the plan). onnxscript's constant folder evaluates these subgraphs wherever the sizes are
static (symbolic sizes such as a dynamic batch stay computed), which gives the rules plain
constants to read and rewrite. Nodes reading a weight are never folded, so every parameter
keeps its name and value (as in `sparsec.ir.torch_cleanup`).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

log = logging.getLogger("sparsec.crop")

# Folding inputs/outputs larger than this is not a shape computation.
_SIZE_LIMIT = 8192


def _reads_weight(node: ir.Node) -> bool:
    for v in node.inputs:
        if v is None or not v.is_initializer() or v.const_value is None:
            continue
        if v.const_value.dtype.is_floating_point() and v.const_value.size > 1:
            return True
    return False


def fold_shape_computations(model: ir.Model) -> int:
    """Fold constant and static-shape subgraphs in place; returns how many nodes went away."""
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import _constant_folding

    before = model.graph.num_nodes()
    passes = ir.passes.Sequential(
        _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=_SIZE_LIMIT,
            output_size_limit=_SIZE_LIMIT,
            should_fold=lambda node: False if _reads_weight(node) else None,
        ),
        common_passes.RemoveUnusedNodesPass(),
    )
    passes(model)
    removed = before - model.graph.num_nodes()
    if removed:
        log.info("crop-channels: folded %d shape-computation nodes into constants", removed)
    return max(removed, 0)
