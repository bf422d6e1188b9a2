"""`lower-attention-kernels`: com.sparsec.SparseAttention -> the fused kernel custom op.

The layout attributes become one constant int32 input ([2, H]: local window and sink blocks,
or the explicit block mask [H, query blocks, key blocks]), read once when ONNX Runtime
creates the kernel. Nodes the kernel cannot take (unknown shapes, more queries than keys,
head dim > 256, not fp32) stay for `legalize-dense`, each with its reason in the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.attention import OP_TYPE, BlockLayout
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
            table = np.stack([np.broadcast_to(np.array(layout.local_blocks, np.int32), (heads,)),
                              np.broadcast_to(np.array(layout.sink_blocks, np.int32), (heads,))])
        base = node.name or node.outputs[0].name
        lay = ir.Value(name=f"{base}.layout", const_value=ir.tensor(np.ascontiguousarray(table), name=f"{base}.layout"),
                       shape=ir.Shape(table.shape), type=ir.TensorType(ir.DataType.INT32))
        model.graph.register_initializer(lay)
        bias = node.inputs[3] if len(node.inputs) > 3 else None
        inputs = [*node.inputs[:3], lay] + ([bias] if bias is not None else [])
        attrs = [ir.AttrFloat32("scale", node.attributes["scale"].as_float()),
                 ir.AttrInt64("block", layout.block), ir.AttrInt64("causal", int(layout.causal)),
                 ir.AttrInt64("has_bias", int(bias is not None))]
        new = ir.Node(KERNEL_DOMAIN, KERNEL_OP, inputs, attributes=attrs, name=f"{base}/kernel", num_outputs=1)
        model.graph.insert_before(node, new)
        old = node.outputs[0]
        out = new.outputs[0]
        out.shape, out.type = old.shape, old.type
        name = old.name
        old.replace_all_uses_with(out, replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        out.name = name
