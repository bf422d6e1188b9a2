"""`legalize-dense`: lower every `com.sparsec` op to standard ONNX with identical outputs."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from sparsec.dialect import DOMAIN
from sparsec.dialect.reference import lower_to_reference
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult
from sparsec.pm.registry import register_pass


@register_pass
@dataclass(frozen=True)
class LegalizeDense(Pass):
    name = "legalize-dense"
    summary = "Lower com.sparsec ops to standard ONNX (sparse weights stored dense, zeros kept)."
    exact = True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        lowered = lower_to_reference(model)
        if lowered:
            RemoveUnusedNodesPass()(model)
            RemoveUnusedOpsetsPass()(model)
        return PassResult(changed=bool(lowered), stats={"ops_lowered": lowered})

    def verify(self, model: ir.Model, ctx: PassContext) -> list[str]:
        left = [n.name or n.op_type for n in model.graph if n.domain == DOMAIN]
        return [f"{len(left)} {DOMAIN} ops remain, e.g. '{left[0]}'"] if left else []
