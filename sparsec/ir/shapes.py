"""Concrete shapes for every value, by ONNX shape inference on a concretized copy.

Symbolic input dims (batch, sequence) are replaced by the values in `dims` (batch 1 and
sequence 16 by default) so costs are numbers, not formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import inline_copy, to_proto
from sparsec.numerics import concrete_shape


@dataclass(frozen=True)
class ShapeInfo:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, int]  # onnx TensorProto dtype codes

    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        found = self.shapes.get(value.name)
        if found is None and value.shape is not None and value.shape.is_static():
            # Values that exist only in the un-lowered IR (com.sparsec outputs) carry shapes.
            found = tuple(int(d) for d in value.shape)
        return found


def infer_concrete_shapes(model: ir.Model, dims: dict[str, int]) -> ShapeInfo:
    copy = inline_copy(model)
    lower_to_reference(copy)
    for value in copy.graph.inputs:
        if value.shape is not None and not value.is_initializer():
            value.shape = ir.Shape(concrete_shape(value, dims))
    proto = to_proto(copy)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims_ = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if all(d >= 0 for d in dims_):
            shapes[vi.name] = tuple(dims_)
            dtypes[vi.name] = t.elem_type
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
    return ShapeInfo(shapes, dtypes)
