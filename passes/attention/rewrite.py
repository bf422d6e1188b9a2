"""Rewrite one matched attention block into `com.sparsec.SparseAttention`."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.attention import OP_TYPE
from sparsec.ir.rewrite import replace_value
from sparsec.passes.attention.match import AttentionMatch


def _insert(graph: ir.Graph, before: ir.Node, node: ir.Node) -> ir.Value:
    node.outputs[0].name = node.name
    graph.insert_before(before, node)
    return node.outputs[0]


def rewrite(model: ir.Model, match: AttentionMatch, *, block: int, local_blocks: list[int],
            sink_blocks: list[int], causal: bool, keep_bias: bool, topk_blocks: list[int] | None = None,
            summary_blocks: list[int] | None = None, topk_score: int = 0) -> ir.Node:
    """Replace the block by SparseAttention(Q, K, V[, bias]); the old nodes become dead (the
    caller removes them). Returns the new node."""
    graph = model.graph
    anchor = match.out.producer()
    base = match.name.rsplit("/", 1)[0] if "/" in match.name else match.name
    k = match.k
    if match.k_perm is not None:
        k = _insert(graph, anchor, ir.Node("", "Transpose", [k], attributes=[ir.AttrInt64s("perm", match.k_perm)],
                                           name=f"{base}/sparse_attention/k_transpose", num_outputs=1))
        k.type = ir.TensorType(ir.DataType.FLOAT)
    inputs = [match.q, k, match.v]
    if keep_bias:
        if match.where_mask is not None:
            where, index = match.where_mask
            fill = where.inputs[3 - index]
            zero = ir.Value(name=f"{base}/sparse_attention/zero", const_value=ir.tensor(np.array(0.0, np.float32)),
                            shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT))
            zero.const_value.name = zero.name
            graph.register_initializer(zero)
            branches = [zero, fill] if index == 1 else [fill, zero]
            bias = _insert(graph, anchor, ir.Node("", "Where", [where.inputs[0], *branches],
                                                  name=f"{base}/sparse_attention/mask_bias", num_outputs=1))
            bias.type = ir.TensorType(ir.DataType.FLOAT)
        else:
            bias = match.bias
        inputs.append(bias)
    attrs = [
        ir.AttrFloat32("scale", float(match.scale)),
        ir.AttrInt64("block", block),
        ir.AttrInt64("causal", int(causal)),
        ir.AttrInt64s("local_blocks", local_blocks),
        ir.AttrInt64s("sink_blocks", sink_blocks),
    ]
    if topk_blocks and any(topk_blocks):
        attrs.append(ir.AttrInt64s("topk_blocks", topk_blocks))
    if topk_score and topk_blocks and any(topk_blocks):
        attrs.append(ir.AttrInt64("topk_score", topk_score))
    if summary_blocks and any(summary_blocks):
        attrs.append(ir.AttrInt64s("summary_blocks", [int(x) for x in summary_blocks]))
    node = ir.Node(DOMAIN, OP_TYPE, inputs, attributes=attrs, name=f"{base}/sparse_attention", num_outputs=1)
    graph.insert_before(anchor, node)
    replace_value(match.out, node.outputs[0])
    return node
