"""Rules for ops that keep channels apart: unary and broadcasting binary ops, activations,
softmax, reductions, pooling, and dropout."""

from __future__ import annotations

import onnx_ir as ir

from sparsec.passes.structural.coupling import CouplingBuilder
from sparsec.passes.structural.rules import (
    RuleUnsupported,
    attr_int,
    attr_ints,
    const,
    input_at,
    link_broadcast,
    link_same,
    rule,
)

UNARY = (
    "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Neg", "Abs", "Sqrt", "Exp", "Log",
    "Reciprocal", "Identity", "Cast", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "IsNaN",
    "IsInf", "Swish",
)
BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu", "BitShift",
    "Clip", "CastLike",
)
REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)
POOL = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@rule(*UNARY)
def unary(node: ir.Node, b: CouplingBuilder) -> None:
    link_same(b, node.inputs[0], node.outputs[0])


@rule(*BROADCAST)
def broadcast(node: ir.Node, b: CouplingBuilder) -> None:
    if node.op_type == "CastLike":
        link_same(b, node.inputs[0], node.outputs[0])
        return
    link_broadcast(b, node.outputs[0], list(node.inputs))


@rule("Dropout")
def dropout(node: ir.Node, b: CouplingBuilder) -> None:
    for out in node.outputs:
        if out is not None and b.shape(out) is not None:
            link_same(b, node.inputs[0], out)


@rule("Softmax", "LogSoftmax", "Hardmax", "LpNormalization")
def softmax(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    link_same(b, x, y)
    b.norm(b.axis(x, attr_int(node, "axis", -1)), f"{node.op_type} normalises over it")


def _reduced_axes(node: ir.Node, rank: int) -> list[int]:
    axes = attr_ints(node, "axes")
    if axes is None and input_at(node, 1) is not None:
        found = const(node.inputs[1])
        if found is None:
            raise RuleUnsupported(f"{node.op_type} with axes computed at run time")
        axes = [int(a) for a in found.reshape(-1)]
    if not axes:
        return [] if attr_int(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


@rule(*REDUCE, "ArgMax", "ArgMin")
def reduce(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = len(b.shape(x))
    if node.op_type in ("ArgMax", "ArgMin"):
        reduced = [attr_int(node, "axis", 0) % rank]
    else:
        reduced = _reduced_axes(node, rank)
    keep = attr_int(node, "keepdims", 1)
    j = 0
    for k in range(rank):
        if k in reduced:
            if node.op_type not in ("ArgMax", "ArgMin"):
                b.accept(b.axis(x, k))  # a reduction over channels is fine, but not exact
                b.norm(b.axis(x, k), f"{node.op_type} reduces over it")
            if keep:
                j += 1
            continue
        b.link(b.axis(x, k), b.axis(y, j))
        j += 1


@rule(*POOL)
def pool(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    b.link(b.axis(x, 0), b.axis(y, 0))
    b.link(b.axis(x, 1), b.axis(y, 1))
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
        raise RuleUnsupported("MaxPool indices output is used")
