"""`sparsify`: prune weights to an unstructured, block or N:M pattern with any criterion.

Unstructured and block results are marked by `com.sparsec.Sparse`, N:M ones by `NMSparse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.calib.stats import require_calibration
from sparsec.passes.sparsify.apply import apply_plan, pattern_skip_reason, record_outcomes
from sparsec.passes.sparsify.criteria import check_criterion, needs_data
from sparsec.passes.sparsify.options import LayerSelection, ReconstructionOptions
from sparsec.passes.sparsify.patterns import Pattern, parse_pattern
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass


@register_pass
@dataclass(frozen=True)
class Sparsify(LayerSelection, ReconstructionOptions, Pass):
    name = "sparsify"
    summary = "Prune MatMul/Gemm/Conv weights to an unstructured (u:0.75), block (b16x4:0.75) or N:M pattern."
    exact = False

    pattern: str = option("u:0.5", "dense, N:M, u:FRACTION or bRxC:FRACTION (fraction of zeros)")
    criterion: str = option("magnitude", "magnitude, wanda or sparsegpt (these need calibration data)")
    sequential: bool = option(True, "data criteria: collect each layer's inputs with the layers before it already pruned")

    def __post_init__(self) -> None:
        parse_pattern(self.pattern)
        check_criterion(self.criterion, self.name)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        pattern: Pattern = parse_pattern(self.pattern)
        plan, skipped = [], {}
        for layer in self.selected_layers(model):
            reason = pattern_skip_reason(layer, pattern, self.min_params)
            if reason is not None:
                skipped[layer.name] = reason
                ctx.record(self.name, layer.name, weight=layer.weight.name, decision="skip", reason=reason)
                continue
            plan.append((layer, pattern))
        calib = require_calibration(ctx, f"sparsify{{criterion={self.criterion}}}") if needs_data(self.criterion) and plan else None
        outcomes = apply_plan(model, plan, self.criterion, calib, sequential=self.sequential, recon=self.reconstruction)
        params, zeros = record_outcomes(ctx, self.name, [layer for layer, _ in plan], outcomes, with_axis=False)
        stats = {
            "layers_pruned": len(outcomes),
            "layers_skipped": len(skipped),
            "params_pruned": params,
            "weight_zero_fraction": round(zeros / params, 6) if params else 0.0,
            "skipped": skipped,
        }
        return PassResult(changed=bool(outcomes), stats=stats)
