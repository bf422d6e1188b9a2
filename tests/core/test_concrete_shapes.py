"""Concrete shape inference through exporter-style shape computations."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from sparsec.ir.shapes import infer_concrete_shapes
from sparsec.passes.analysis.cost_model import node_macs


def _position_ids_model():
    """Hugging Face style: position ids = Range(0, Shape(x)[0]), gathered from a table, added
    to x, then a Linear; plus the exporter's symbolic value_info for intermediate values.
    ONNX's own data propagation stops at this Range (as in the real MiniLM export)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
        helper.make_node("Squeeze", ["s"], ["seq"]),
        helper.make_node("Range", ["zero", "seq", "one"], ["pos"]),
        helper.make_node("Gather", ["table", "pos"], ["pe"]),
        helper.make_node("Add", ["x", "pe"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.zeros((64, 32), np.float32), "table"),
        numpy_helper.from_array(np.zeros((32, 48), np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 48])], inits,
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, ["", 32])],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_shapes_reach_through_range_and_stale_symbolic_value_info() -> None:
    model = _position_ids_model()
    info = infer_concrete_shapes(model, {"seq": 10})
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert info.shape(matmul.outputs[0]) == (10, 48)
    assert node_macs(matmul, info) == 10 * 48 * 32


def test_shapes_reach_through_a_range_over_the_batch() -> None:
    """The real MiniLM export: Range(0, Shape(mask)[0]) (row indices), where ONNX's data
    propagation gives up; sparsec folds the shape computation into constants."""
    nodes = [
        helper.make_node("Shape", ["mask"], ["s"], start=0, end=1),
        helper.make_node("Squeeze", ["s"], ["rows"]),
        helper.make_node("Range", ["zero", "rows", "one"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["rf", "axis1"], ["col"]),
        helper.make_node("Mul", ["col", "x"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.zeros((32, 48), np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 64]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    info = infer_concrete_shapes(model, {"batch": 3})
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert info.shape(matmul.outputs[0]) == (3, 48)
