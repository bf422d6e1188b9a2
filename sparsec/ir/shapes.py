"""Concrete shapes for every value, by ONNX shape inference on a light, concretized copy.

Symbolic input dims (batch, sequence) are replaced by the values in `dims` (batch 1 and
sequence 16 by default) so costs are numbers, not formulas. Shape inference needs only the
shapes of large weights, so they are declared as typed graph inputs instead of being
serialized (on BERT-base that is most of the time otherwise).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from sparsec.dialect.reference import lower_to_reference
from sparsec.errors import InputError
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
        if tensor is None:
            continue
        if tensor.size <= SMALL:
            if isinstance(tensor, ir.ExternalTensor):
                # The proto is read without the model's folder: small constants of an
                # external-data file (as the dynamo exporter writes) must travel inline.
                value.const_value = ir.tensor(np.array(tensor.numpy()), name=value.name)  # a copy: no view of the mmap
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
    proto = to_proto(copy)
    # Exporters record symbolic shapes ('batch', '') of intermediate values; ONNX inference
    # keeps those instead of the concrete dims it would derive, so drop every non-static one.
    static = [vi for vi in proto.graph.value_info if vi.name in _static_shapes_of([vi])]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(static)
    return proto


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError:
        pass
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except onnx.shape_inference.InferenceError as e:  # e.g. a declared output type it contradicts
        first = (str(e).strip().splitlines() or ["InferenceError"])[0]
        raise InputError(f"ONNX shape inference fails on this model: {first[:300]}") from None


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = proto.graph
    return _static_shapes_of(list(g.input) + list(g.value_info) + list(g.output))


def _static_shapes_of(infos: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, ...]]:
    found = {}
    for vi in infos:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            found[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    return found


def _eval_node(node: onnx.NodeProto, inputs: list[np.ndarray], opsets) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    vis = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for k, a in enumerate(inputs)]
    n = onnx.NodeProto()
    n.CopyFrom(node)
    live = [i for i in node.input if i]
    del n.input[:]
    n.input.extend(f"i{live.index(i)}" if i else "" for i in node.input)
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
    model = helper.make_model(helper.make_graph([n], "fold", vis, outs), opset_imports=opsets)
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {f"i{k}": a for k, a in enumerate(inputs)})]
    except Exception:  # an op the reference evaluator lacks: leave the node to shape inference
        return None


def _fold_shape_values(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Replace shape computations (Shape of a value whose shape is known, then small ops on
    constants: Gather, Concat, Range, ...) by constants. ONNX's data propagation does not
    reach through all of them (Range, as in Hugging Face position ids), and one unknown
    shape there leaves the rest of the model without shapes."""
    g = proto.graph
    # External tensors are weights, never shape constants; onnx would read them relative to
    # the working folder, not the model's.
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    folded: list[onnx.NodeProto] = []
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            continue
        values = None
        if node.op_type == "Shape" and node.input[0] in shapes:
            attrs = {a.name: a.i for a in node.attribute}
            dims = shapes[node.input[0]]
            values = [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], np.int64)]
        elif node.op_type == "Constant" or (node.input and all(i in consts for i in node.input if i)):
            args = [consts[i] for i in node.input if i]
            if sum(a.size for a in args) <= SMALL:
                values = _eval_node(node, args, proto.opset_import)
        if values is None or len(values) != len(node.output) or any(v.size > SMALL for v in values):
            continue
        consts.update(zip(node.output, values, strict=True))
        folded.append(node)
    if not folded:
        return False
    for node in folded:
        g.node.remove(node)
        g.initializer.extend(numpy_helper.from_array(consts[o], o) for o in node.output)
    return True


# Inferred shapes of recent light protos, by their bytes: a compile asks for the same model's
# shapes several times (the cost model, then the tuner's plan, before and after a pass that
# changed only weights; BERT-base: 5 calls, 2 repeats of ~0.1 s each).
_CACHE: OrderedDict[bytes, tuple[dict[str, tuple[int, ...]], dict[str, int]]] = OrderedDict()
_CACHE_SIZE = 4


def infer_concrete_shapes(model: ir.Model, dims: dict[str, int]) -> ShapeInfo:
    proto = shape_proto(model, dims)
    key = hashlib.sha256(proto.SerializeToString(deterministic=True)).digest()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        shapes, dtypes = _CACHE[key]
    else:
        shapes, dtypes = _inferred_shapes(proto)
        _CACHE[key] = (shapes, dtypes)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    shapes, dtypes = dict(shapes), dict(dtypes)  # callers may add to theirs
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            shapes[value.name] = tuple(value.const_value.shape)
            dtypes[value.name] = int(value.const_value.dtype)
    return ShapeInfo(shapes, dtypes)


def _inferred_shapes(proto: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    inferred = _infer(proto)
    for _ in range(4):  # each round can expose shapes that the next round's Shape nodes read
        if not _fold_shape_values(proto, _static_shapes(inferred)):
            break
        inferred = _infer(proto)
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
    for t in g.initializer:  # shape computations folded into constants
        shapes.setdefault(t.name, tuple(t.dims))
        dtypes.setdefault(t.name, t.data_type)
    return shapes, dtypes
