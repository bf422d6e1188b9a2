"""Runs the coupling rules over every node of a graph (the driver of the analysis)."""

from __future__ import annotations

import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.ir.shapes import ShapeInfo
from sparsec.layers import layer_name
from sparsec.passes.structural import rules_elementwise, rules_layers, rules_shape  # noqa: F401  (register)
from sparsec.passes.structural.coupling import CouplingBuilder
from sparsec.passes.structural.rules import RULES, RuleUnsupported
from sparsec.passes.structural.rules_elementwise import UNARY

# Ops whose first output has the first input's shape: used where ONNX shape inference gave
# up (e.g. GroupNormalization-21 in some onnx releases).
SAME_SHAPE = ("GroupNormalization", "LayerNormalization", "BatchNormalization", "InstanceNormalization", *UNARY)


def _fill_same_shape(node: ir.Node, shapes: ShapeInfo) -> None:
    if node.op_type in SAME_SHAPE and node.outputs and node.inputs and node.inputs[0] is not None:
        out, src = node.outputs[0], shapes.shape(node.inputs[0])
        if out is not None and shapes.shape(out) is None and src is not None:
            shapes.shapes[out.name] = src


def _operands(node: ir.Node) -> list[ir.Value]:
    return [v for v in (*node.inputs, *node.outputs) if v is not None]


def trace_couplings(model: ir.Model, shapes: ShapeInfo) -> CouplingBuilder:
    """Apply the rule of every node; axes no rule maps are pinned with a reason."""
    b = CouplingBuilder(shapes)
    graph = model.graph
    for value in graph.inputs:
        if not value.is_initializer() and b.shape(value) is not None:
            for k in range(len(b.shape(value))):
                b.pin(b.axis(value, k), "graph input")
    for value in graph.outputs:
        if b.shape(value) is not None:
            for k in range(len(b.shape(value))):
                b.pin(b.axis(value, k), "graph output")
    for index, node in enumerate(graph):
        b.accepted = set()
        b.node_index, b.node_op = index, node.op_type
        _fill_same_shape(node, shapes)
        label = f"{node.op_type} '{layer_name(node)}'"
        unknown = [v for v in _operands(node) if b.shape(v) is None]
        fn = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        reason = None
        if node.domain == DOMAIN:
            reason = f"{label}: {DOMAIN} op (crop channels before sparsifying)"
        elif fn is None:
            reason = f"{label}: no coupling rule for this op"
        elif unknown:
            reason = f"{label}: shape of %{unknown[0].name} is unknown"
        elif any(attr.type == ir.AttributeType.GRAPH for attr in node.attributes.values()):
            reason = f"{label}: has a subgraph"
        else:
            try:
                fn(node, b)
            except RuleUnsupported as e:
                reason = f"{label}: {e}"
                b.accepted = set()
        for v in _operands(node):
            shape = b.shape(v)
            if shape is None:
                continue
            for k, size in enumerate(shape):
                if size <= 1:
                    continue
                a = b.axis(v, k)
                if reason is not None:
                    b.pin(a, reason)
                elif a not in b.accepted:
                    b.pin(a, f"{label}: axis {k} of %{v.name} is not a channel axis of this op")
    return b
