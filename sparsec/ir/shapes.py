"""Concrete shapes for every value, by ONNX shape inference on a light, concretized copy.

Symbolic input dims (batch, sequence) are replaced by the values in `dims` (batch 1 and
sequence 16 by default) so costs are numbers, not formulas. Shape inference needs only the
shapes of large weights, so they are declared as typed graph inputs instead of being
serialized (on BERT-base that is most of the time otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import to_proto
from sparsec.numerics import concrete_shape

SMALL = 4096  # constants up to this many elements stay (shape constants, indices, scalars)


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


def shape_proto(model: ir.Model, dims: dict[str, int]) -> onnx.ModelProto:
    """`model` in standard ONNX with concrete input shapes and large weights as typed inputs."""
    copy = model.clone()  # structural copy sharing tensors: the edits below stay in the copy
    lower_to_reference(copy)
    graph = copy.graph
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or tensor.size <= SMALL:
            continue
        graph.initializers.pop(value.name)
        if not value.is_graph_input():
            graph.inputs.append(value)
        value.shape = ir.Shape(tensor.shape)
        value.type = ir.TensorType(tensor.dtype)
        value.const_value = None
    for value in graph.inputs:
        if value.shape is not None and not value.is_initializer():
            value.shape = ir.Shape(concrete_shape(value, dims))
    return to_proto(copy)


def infer_concrete_shapes(model: ir.Model, dims: dict[str, int]) -> ShapeInfo:
    proto = shape_proto(model, dims)
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
        d = [x.dim_value if x.HasField("dim_value") else -1 for x in t.shape.dim]
        if all(x >= 0 for x in d):
            shapes[vi.name] = tuple(d)
            dtypes[vi.name] = t.elem_type
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            shapes[value.name] = tuple(value.const_value.shape)
            dtypes[value.name] = int(value.const_value.dtype)
    return ShapeInfo(shapes, dtypes)
