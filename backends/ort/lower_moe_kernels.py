"""`lower-moe-kernels`: `com.sparsec.MoE` -> the sparsec kernel op `MoEFFN` (ONNX Runtime).

The kernel takes the op's inputs as they are (same stacked weight layout); activation and
gating become integer attributes. At batch 1 it reads only the selected experts' weights,
for many tokens it groups tokens by expert (kernels/src/moe_kernel.c). MoE ops the kernel
cannot take (non-fp32 input) stay for `legalize-dense`, which lowers them to masked dense ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.moe import ACTIVATION_CODES, GATING_CODES, moe_dims
from sparsec.ir.rewrite import replace_value
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult
from sparsec.pm.registry import register_pass
from sparsec.runtime import KERNEL_DOMAIN

MOE_OP = "MoEFFN"


@register_pass
@dataclass(frozen=True)
class LowerMoEKernels(Pass):
    name = "lower-moe-kernels"
    summary = "Lower com.sparsec.MoE to the sparsec MoE FFN kernel (ONNX Runtime custom op)."
    exact = True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        lowered, kept = 0, {}
        for node in [n for n in model.graph if n.domain == DOMAIN and n.op_type == "MoE"]:
            x = node.inputs[0]
            if x.type is not None and x.type.dtype != ir.DataType.FLOAT:
                kept[node.name] = f"input dtype {x.type.dtype.short_name()} (the kernel takes fp32)"
                continue
            d, e, f = moe_dims(node)
            gated = len(node.inputs) > 7 and node.inputs[7] is not None
            attrs = [ir.AttrInt64("D", d), ir.AttrInt64("E", e), ir.AttrInt64("F", f),
                     ir.AttrInt64("top_k", node.attributes["top_k"].as_int()),
                     ir.AttrInt64("activation", ACTIVATION_CODES[node.attributes["activation"].as_string()]),
                     ir.AttrInt64("gating", GATING_CODES[node.attributes["gating"].as_string()]),
                     ir.AttrInt64("gated", int(gated))]
            kernel = ir.Node(KERNEL_DOMAIN, MOE_OP, list(node.inputs[:8 if gated else 7]), attributes=attrs,
                             name=f"{node.name}/kernel", num_outputs=1)
            model.graph.insert_before(node, kernel)
            replace_value(node.outputs[0], kernel.outputs[0], drop=node)
            lowered += 1
            ctx.record(self.name, node.name, decision=f"kernel {MOE_OP}", experts=e, top_k=attrs[3].value)
        if lowered:
            model.opset_imports.setdefault(KERNEL_DOMAIN, 1)
        return PassResult(changed=bool(lowered), stats={"moe_lowered": lowered, "moe_kept": kept})
