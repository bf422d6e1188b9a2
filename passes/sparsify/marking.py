"""Write a pruning decision into the IR: store the pruned weight and insert its marker op."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.schema import OPSET_VERSION
from sparsec.ir.file_tensor import store_tensor
from sparsec.layers import Layer
from sparsec.passes.sparsify.patterns import Pattern


def insert_marker(
    model: ir.Model, layer: Layer, pruned: np.ndarray, op_type: str, attributes: list[ir.Attr], suffix: str
) -> ir.Node:
    """Store the pruned weight (under its original name) and put a `com.sparsec` marker op
    between it and its consumer."""
    weight = layer.weight
    weight.const_value = store_tensor(pruned, name=weight.name)  # spilled to disk when streaming
    consumer = layer.path[-1] if layer.path else layer.node
    marked = ir.Value(name=f"{weight.name}__{suffix}", shape=weight.shape, type=weight.type)
    marker = ir.Node(DOMAIN, op_type, [weight], attributes=attributes, outputs=[marked], name=f"{layer.name}/{suffix}")
    model.graph.insert_before(consumer, marker)
    for i, value in enumerate(consumer.inputs):
        if value is weight:
            consumer.replace_input_with(i, marked)
    model.opset_imports.setdefault(DOMAIN, OPSET_VERSION)
    return marker


def mark_nm(model: ir.Model, layer: Layer, pruned: np.ndarray, n: int, m: int) -> ir.Node:
    attrs = [ir.AttrInt64("n", n), ir.AttrInt64("m", m), ir.AttrInt64("axis", layer.reduction_axis)]
    return insert_marker(model, layer, pruned, "NMSparse", attrs, f"nm{n}_{m}")


def mark_sparse(model: ir.Model, layer: Layer, pruned: np.ndarray, block: tuple[int, int], density: float) -> ir.Node:
    attrs = [
        ir.AttrInt64("axis", layer.reduction_axis),
        ir.AttrInt64s("block", list(block)),
        ir.AttrFloat32("density", float(density)),
    ]
    return insert_marker(model, layer, pruned, "Sparse", attrs, "sparse")


def mark_pattern(model: ir.Model, layer: Layer, pruned: np.ndarray, pattern: Pattern) -> ir.Node | None:
    """The marker for `pattern` (none for dense: the weight is left as it was)."""
    if pattern.is_dense:
        return None
    if pattern.kind == "nm":
        return mark_nm(model, layer, pruned, pattern.n, pattern.m)
    # Declare the density actually reached (a hair above, for float32 rounding of the attribute).
    return mark_sparse(model, layer, pruned, pattern.block, min(1.0, tile_density(pruned, layer.reduction_axis, pattern.block) + 1e-6))


def tile_density(w: np.ndarray, axis: int, block: tuple[int, int]) -> float:
    view = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
    bo, bk = block
    tiles = view.reshape(view.shape[0] // bo, bo, view.shape[1] // bk, bk)
    return float(np.count_nonzero(np.any(tiles != 0, axis=(1, 3)))) / (tiles.shape[0] * tiles.shape[2])
