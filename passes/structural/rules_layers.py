"""Rules for weight-bearing and normalisation ops: Conv (grouped, depthwise), ConvTranspose,
MatMul, Gemm, BatchNorm, InstanceNorm, LayerNorm, GroupNorm."""

from __future__ import annotations

import onnx_ir as ir

from sparsec.layers import layer_name
from sparsec.passes.structural.coupling import CouplingBuilder
from sparsec.passes.structural.rules import (
    RuleUnsupported,
    attr_int,
    input_at,
    link_broadcast,
    link_same,
    rule,
)


def _axes(b: CouplingBuilder, v: ir.Value) -> list[int]:
    return [b.axis(v, k) for k in range(len(b.shape(v)))]


def _set_int_attr(node: ir.Node, name: str, value: int) -> None:
    node.attributes[name] = ir.AttrInt64(name, value)


def _used_extra_outputs(node: ir.Node) -> bool:
    return any(out is not None and (out.uses() or out.is_graph_output()) for out in node.outputs[1:])


@rule("Conv")
def conv(node: ir.Node, b: CouplingBuilder) -> None:
    x, w, bias, y = node.inputs[0], node.inputs[1], input_at(node, 2), node.outputs[0]
    groups = attr_int(node, "group", 1)
    x1, w0, w1, y1 = b.axis(x, 1), b.axis(w, 0), b.axis(w, 1), b.axis(y, 1)
    b.link(b.axis(x, 0), b.axis(y, 0))
    b.link(y1, w0)
    if bias is not None:
        b.link(b.axis(bias, 0), y1)
    if groups == 1:
        b.link(x1, w1)
    else:
        # Channel c of a grouped conv is (group, index within the group): whole groups, or
        # the same within-group index in every group, can go; depthwise is the case of 1.
        alpha = b.virtual(groups, f"groups of {layer_name(node)}")
        b.product(x1, [alpha, w1])
        b.product(y1, [alpha, b.virtual(b.size(w0) // groups, f"outputs per group of {layer_name(node)}")])
        b.on_crop(lambda graph, node, kept: _set_int_attr(node, "group", len(kept(alpha))))
    b.contract(x1, w1)
    b.macs(layer_name(node), _axes(b, y) + _axes(b, w)[1:], [_axes(b, x), _axes(b, w), _axes(b, y)])


@rule("ConvTranspose")
def conv_transpose(node: ir.Node, b: CouplingBuilder) -> None:
    x, w, bias, y = node.inputs[0], node.inputs[1], input_at(node, 2), node.outputs[0]
    groups = attr_int(node, "group", 1)
    x1, w0, w1, y1 = b.axis(x, 1), b.axis(w, 0), b.axis(w, 1), b.axis(y, 1)
    b.link(b.axis(x, 0), b.axis(y, 0))
    b.link(x1, w0)
    if bias is not None:
        b.link(b.axis(bias, 0), y1)
    if groups == 1:
        b.link(y1, w1)
    else:
        alpha = b.virtual(groups, f"groups of {layer_name(node)}")
        b.product(x1, [alpha, b.virtual(b.size(x1) // groups, f"inputs per group of {layer_name(node)}")])
        b.product(y1, [alpha, w1])
        b.on_crop(lambda graph, node, kept: _set_int_attr(node, "group", len(kept(alpha))))
    b.contract(x1, w0)
    b.macs(layer_name(node), _axes(b, x) + _axes(b, w)[1:], [_axes(b, x), _axes(b, w), _axes(b, y)])


@rule("MatMul")
def matmul(node: ir.Node, b: CouplingBuilder) -> None:
    a, m, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rm, ry = len(b.shape(a)), len(b.shape(m)), len(b.shape(y))
    if ra < 2 or rm < 2:
        raise RuleUnsupported("MatMul with a 1-D operand")
    b.link(b.axis(a, ra - 1), b.axis(m, rm - 2))
    b.link(b.axis(y, ry - 1), b.axis(m, rm - 1))
    b.link(b.axis(y, ry - 2), b.axis(a, ra - 2))
    b.contract(b.axis(a, ra - 1), b.axis(m, rm - 2))
    # Batch axes broadcast like an elementwise op.
    for x, rx in ((a, ra), (m, rm)):
        for j in range(3, rx + 1):
            xa, ya = b.axis(x, rx - j), b.axis(y, ry - j)
            if b.size(xa) == b.size(ya):
                b.link(xa, ya)
            else:
                b.accept(xa, ya)
    b.macs(layer_name(node), _axes(b, y) + [b.axis(a, ra - 1)], [_axes(b, a), _axes(b, m), _axes(b, y)])


@rule("Gemm")
def gemm(node: ir.Node, b: CouplingBuilder) -> None:
    a, m, c, y = node.inputs[0], node.inputs[1], input_at(node, 2), node.outputs[0]
    am, ak = (1, 0) if attr_int(node, "transA", 0) else (0, 1)
    mk, mn = (1, 0) if attr_int(node, "transB", 0) else (0, 1)
    b.link(b.axis(y, 0), b.axis(a, am))
    b.link(b.axis(a, ak), b.axis(m, mk))
    b.link(b.axis(y, 1), b.axis(m, mn))
    b.contract(b.axis(a, ak), b.axis(m, mk))
    if c is not None:
        link_broadcast(b, y, [c])
    b.macs(layer_name(node), [b.axis(y, 0), b.axis(y, 1), b.axis(a, ak)], [_axes(b, a), _axes(b, m), _axes(b, y)])


@rule("BatchNormalization", "InstanceNormalization")
def per_channel_norm(node: ir.Node, b: CouplingBuilder) -> None:
    if _used_extra_outputs(node):
        raise RuleUnsupported(f"{node.op_type} in training mode (running statistics are outputs)")
    x, y = node.inputs[0], node.outputs[0]
    link_same(b, x, y)
    for p in node.inputs[1:]:
        if p is not None:
            b.link(b.axis(p, 0), b.axis(x, 1))


@rule("LayerNormalization", "RMSNormalization")
def layer_norm(node: ir.Node, b: CouplingBuilder) -> None:
    if _used_extra_outputs(node):
        raise RuleUnsupported(f"{node.op_type} mean/inv-std-dev outputs are used")
    x, y = node.inputs[0], node.outputs[0]
    rank = len(b.shape(x))
    link_same(b, x, y)
    for p in node.inputs[1:]:
        if p is not None:
            link_broadcast(b, x, [p])
    for k in range(attr_int(node, "axis", -1) % rank, rank):
        b.norm(b.axis(x, k), f"{node.op_type} normalises over it (statistics change when cropped)")


@rule("GroupNormalization")
def group_norm(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    groups = attr_int(node, "num_groups", 1)
    link_same(b, x, y)
    x1 = b.axis(x, 1)
    alpha = b.virtual(groups, f"groups of {layer_name(node)}")
    beta = b.virtual(b.size(x1) // groups, f"channels per group of {layer_name(node)}")
    b.product(x1, [alpha, beta])
    b.norm(beta, "GroupNormalization normalises within a group (statistics change when cropped)")
    for p in node.inputs[1:3]:
        if p is not None:
            pa = b.axis(p, 0)
            b.link(pa, x1 if b.size(pa) == b.size(x1) else alpha)
    b.on_crop(lambda graph, node, kept: _set_int_attr(node, "num_groups", len(kept(alpha))))
