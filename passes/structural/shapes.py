"""Concrete shapes for the coupling rules without serialising the weights.

`sparsec.ir.shapes.infer_concrete_shapes` copies the whole model, weights included, through
protobuf; on BERT-base that is most of the analysis time. Shape inference needs only the
shapes of large weights, so here they are declared as graph inputs of the right type and
shape while the model is serialised, and put back afterwards.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from sparsec.ir.io import to_proto
from sparsec.ir.shapes import ShapeInfo
from sparsec.numerics import concrete_shape

SMALL = 4096  # constants up to this many elements stay (shape constants, indices, scalars)


def light_proto(model: ir.Model, dims: dict[str, int]) -> onnx.ModelProto:
    """The model as a proto with concrete input shapes and large weights as typed inputs."""
    graph = model.graph
    big = [v for v in graph.initializers.values() if v.const_value is not None and v.const_value.size > SMALL]
    stashed = [(v, v.const_value, v.shape) for v in big]
    inputs = list(graph.inputs)
    saved_shapes = {id(v): v.shape for v in inputs}
    try:
        for v in big:
            graph.initializers.pop(v.name)
            if v not in inputs:
                graph.inputs.append(v)
            v.shape = ir.Shape(v.const_value.shape)  # the data's shape, whatever was declared
            v.const_value = None
        for v in inputs:
            if v.shape is not None and not v.is_initializer():
                v.shape = ir.Shape(concrete_shape(v, dims))
        return to_proto(model)
    finally:
        for v, tensor, declared in stashed:
            v.const_value = tensor
            v.shape = declared
            if v in graph.inputs and v not in inputs:
                graph.inputs.remove(v)
            graph.register_initializer(v)
        for v in inputs:
            v.shape = saved_shapes[id(v)]


def infer_shapes_light(model: ir.Model, dims: dict[str, int]) -> ShapeInfo:
    graph = model.graph
    proto = light_proto(model, dims)
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
    for v in graph.initializers.values():
        if v.const_value is not None:
            shapes[v.name] = tuple(v.const_value.shape)
            dtypes[v.name] = int(v.const_value.dtype)
    return ShapeInfo(shapes, dtypes)
