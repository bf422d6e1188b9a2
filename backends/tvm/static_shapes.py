"""`static-input-shapes`: give every symbolic input dimension its value (TVM legalization).

TVM's schedules (backends/tvm/schedules.py) pick tile sizes from static extents, and the
library is built for one shape, so the TVM backend fixes symbolic dimensions first: from
`--dim NAME=VALUE`, else the defaults the compiler's sample inputs use (batch 1). The
shapes are recorded in the artifact (tvm_signature.json) and checked at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.numerics import concrete_shape
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult
from sparsec.pm.registry import register_pass


@register_pass
@dataclass(frozen=True)
class StaticInputShapes(Pass):
    name = "static-input-shapes"
    summary = "Replace symbolic graph-input dimensions by their values (--dim, else batch 1)."
    exact = True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        fixed = {}
        for value in model.graph.inputs:
            if value.is_initializer() or value.shape is None:
                continue
            if all(isinstance(d, int) for d in value.shape):
                continue
            shape = concrete_shape(value, ctx.dims)
            value.shape = ir.Shape(shape)
            fixed[value.name] = shape
        return PassResult(changed=bool(fixed), stats={"inputs_fixed": fixed})
