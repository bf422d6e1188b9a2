"""`lower-attention-kernels`: com.sparsec.SparseAttention -> the fused kernel custom op.

The layout attributes become one constant int32 input ([2, H]: local window and sink blocks;
[3, H] when `topk_blocks` is set, row 2 the key blocks picked at run time; [4, H] when
`summary_blocks` is set, row 3 those flags (row 2 then zeros without top-k); or the explicit
block mask [H, query blocks, key blocks]), read once when ONNX Runtime creates the kernel. Nodes the kernel cannot take (unknown shapes, more queries than keys,
head dim > 256, not fp32) stay for `legalize-dense`, each with its reason in the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.attention import OP_TYPE, BlockLayout
from sparsec.ir.rewrite import replace_value
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult
from sparsec.pm.registry import register_pass
from sparsec.runtime import KERNEL_DOMAIN

KERNEL_OP = "SparseAttention"
MAX_DIM = 256


def _reason(node: ir.Node, shapes) -> str | None:
    q, k, v = (shapes.shape(x) for x in node.inputs[:3])
    if q is None or k is None or v is None:
        return "Q, K or V has no static shape"
    if q[2] > k[2]:
        return f"{q[2]} queries > {k[2]} keys (the kernel aligns queries to the last keys)"
    if max(q[3], v[3]) > MAX_DIM:
        return f"head dim {max(q[3], v[3])} > {MAX_DIM}"
    for x in node.inputs:
        if x is not None and shapes.dtypes.get(x.name, 1) != 1:
            return "not float32"
    layout = BlockLayout.of(node)
    if layout.summarised and layout.block_mask is not None:
        return "block_mask with summary_blocks: the kernel op's layout input takes a mask or [local, sinks, topk, summary]"
    if layout.block_mask is not None and layout.dynamic:
        return "block_mask with topk_blocks: the kernel op's layout input takes a mask or [local, sinks, topk], not both"
    return None


@register_pass
@dataclass(frozen=True)
class LowerAttentionKernels(Pass):
    name = "lower-attention-kernels"
    summary = "Lower com.sparsec.SparseAttention to sparsec's fused block-sparse attention kernel (ORT custom op)."
    exact = True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from sparsec.ir.shapes import infer_concrete_shapes

        shapes = infer_concrete_shapes(model, ctx.dims)
        lowered, kept = 0, {}
        for node in [n for n in model.graph if n.domain == DOMAIN and n.op_type == OP_TYPE]:
            label = node.name or node.outputs[0].name
            reason = _reason(node, shapes)
            if reason is not None:
                kept[label] = reason
                continue
            self._rewrite(model, node)
            lowered += 1
            ctx.record(self.name, label, decision=f"kernel {KERNEL_DOMAIN}.{KERNEL_OP}")
        if lowered:
            model.opset_imports.setdefault(KERNEL_DOMAIN, 1)
        return PassResult(changed=bool(lowered), stats={"lowered": lowered, "kept_reference": kept})

    @staticmethod
    def _rewrite(model: ir.Model, node: ir.Node) -> None:
        layout = BlockLayout.of(node)
        if layout.block_mask is not None:
            table = layout.block_mask.astype(np.int32)
        else:
            heads = layout.heads()
            rows = [layout.local_blocks, layout.sink_blocks] + ([layout.topk_blocks] if layout.dynamic or layout.summarised
                                                                 else [])
            rows += [layout.summary_blocks] if layout.summarised else []
            table = np.stack([np.broadcast_to(np.array(r, np.int32), (heads,)) for r in rows])
        base = node.name or node.outputs[0].name
        lay = ir.Value(name=f"{base}.layout", const_value=ir.tensor(np.ascontiguousarray(table), name=f"{base}.layout"),
                       shape=ir.Shape(table.shape), type=ir.TensorType(ir.DataType.INT32))
        model.graph.register_initializer(lay)
        bias = node.inputs[3] if len(node.inputs) > 3 else None
        inputs = [*node.inputs[:3], lay] + ([bias] if bias is not None else [])
        attrs = [ir.AttrFloat32("scale", node.attributes["scale"].as_float()),
                 ir.AttrInt64("block", layout.block), ir.AttrInt64("causal", int(layout.causal)),
                 ir.AttrInt64("has_bias", int(bias is not None))]
        if layout.topk_score:
            attrs.append(ir.AttrInt64("topk_score", layout.topk_score))
        new = ir.Node(KERNEL_DOMAIN, KERNEL_OP, inputs, attributes=attrs, name=f"{base}/kernel", num_outputs=1)
        model.graph.insert_before(node, new)
        replace_value(node.outputs[0], new.outputs[0], drop=node)


def raise_attention_kernel(model: ir.Model, node: ir.Node) -> ir.Node:
    """The inverse of the lowering (for `inspect` on artifacts): the kernel op back to
    com.sparsec.SparseAttention with the layout as attributes."""
    from sparsec.errors import InputError

    layout = node.inputs[3] if len(node.inputs) > 3 else None
    if layout is None or layout.const_value is None:
        raise InputError(f"kernel op '{node.name}': the attention layout must be a constant initializer")
    table = layout.const_value.numpy()
    a = node.attributes
    attrs = [ir.AttrFloat32("scale", a["scale"].as_float()), ir.AttrInt64("block", a["block"].as_int()),
             ir.AttrInt64("causal", a["causal"].as_int())]
    if table.ndim == 2 and table.shape[0] in (2, 3, 4):
        attrs += [ir.AttrInt64s("local_blocks", [int(x) for x in table[0]]),
                  ir.AttrInt64s("sink_blocks", [int(x) for x in table[1]])]
        if table.shape[0] >= 3 and table[2].any():
            attrs.append(ir.AttrInt64s("topk_blocks", [int(x) for x in table[2]]))
        if table.shape[0] == 4 and table[3].any():
            attrs.append(ir.AttrInt64s("summary_blocks", [int(x) for x in table[3]]))
    elif table.ndim == 3:
        attrs.append(ir.AttrTensor("block_mask", ir.tensor(table.astype(np.uint8))))
    else:
        raise InputError(f"kernel op '{node.name}': attention layout of shape {list(table.shape)}")
    if "topk_score" in a and a["topk_score"].as_int():
        attrs.append(ir.AttrInt64("topk_score", a["topk_score"].as_int()))
    has_bias = "has_bias" in a and a["has_bias"].as_int() != 0
    inputs = [*node.inputs[:3]] + ([node.inputs[4]] if has_bias and len(node.inputs) > 4 else [])
    new = ir.Node(DOMAIN, OP_TYPE, inputs, attributes=attrs, name=node.name, num_outputs=1)
    model.graph.insert_before(node, new)
    replace_value(node.outputs[0], new.outputs[0], drop=node)
    if not layout.uses() and layout.name in model.graph.initializers and not layout.is_graph_output():
        model.graph.initializers.pop(layout.name)
    model.opset_imports.setdefault(DOMAIN, 1)
    return new
