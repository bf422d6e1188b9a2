"""`sparsify`: prune weights to an unstructured, block or N:M pattern with any criterion.

Unstructured and block results are marked by `com.sparsec.Sparse`, N:M ones by `NMSparse`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import onnx_ir as ir

from sparsec.calib.stats import require_calibration
from sparsec.layers import Layer, find_layers
from sparsec.passes.sparsify.apply import apply_plan, pattern_skip_reason, record_outcomes
from sparsec.passes.sparsify.criteria import (
    Reconstruction,
    check_criterion,
    needs_data,
    reconstruction_option,
)
from sparsec.passes.sparsify.patterns import Pattern, parse_pattern
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass


def selected(layer: Layer, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    def hit(globs: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(layer.name, g) or fnmatch.fnmatchcase(layer.weight.name, g) for g in globs)

    return hit(include) and not hit(exclude)


@register_pass
@dataclass(frozen=True)
class Sparsify(Pass):
    name = "sparsify"
    summary = "Prune MatMul/Gemm/Conv weights to an unstructured (u:0.75), block (b16x4:0.75) or N:M pattern."
    exact = False

    pattern: str = option("u:0.5", "dense, N:M, u:FRACTION or bRxC:FRACTION (fraction of zeros)")
    criterion: str = option("magnitude", "magnitude, wanda or sparsegpt (these need calibration data)")
    sequential: bool = option(True, "data criteria: collect each layer's inputs with the layers before it already pruned")
    damp: float = reconstruction_option("damp")
    correct: bool = reconstruction_option("correct")
    fit_bias: bool = reconstruction_option("fit_bias")
    refit_norms: bool = reconstruction_option("refit_norms")
    refit_kept: bool = reconstruction_option("refit_kept")
    residual: bool = reconstruction_option("residual")
    op_types: tuple[str, ...] = option(("MatMul", "Gemm", "Conv"), "op types to prune")
    include: tuple[str, ...] = option(("*",), "globs on layer or weight names to prune")
    exclude: tuple[str, ...] = option((), "globs on layer or weight names to leave dense")
    min_params: int = option(1024, "skip weights with fewer parameters")

    def __post_init__(self) -> None:
        parse_pattern(self.pattern)
        check_criterion(self.criterion, self.name)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        pattern: Pattern = parse_pattern(self.pattern)
        plan, skipped = [], {}
        for layer in find_layers(model, self.op_types):
            if not selected(layer, self.include, self.exclude):
                continue
            reason = pattern_skip_reason(layer, pattern, self.min_params)
            if reason is not None:
                skipped[layer.name] = reason
                ctx.record(self.name, layer.name, weight=layer.weight.name, decision="skip", reason=reason)
                continue
            plan.append((layer, pattern))
        calib = require_calibration(ctx, f"sparsify{{criterion={self.criterion}}}") if needs_data(self.criterion) and plan else None
        outcomes = apply_plan(model, plan, self.criterion, calib, sequential=self.sequential, recon=Reconstruction.of(self))
        params, zeros = record_outcomes(ctx, self.name, [layer for layer, _ in plan], outcomes, with_axis=False)
        stats = {
            "layers_pruned": len(outcomes),
            "layers_skipped": len(skipped),
            "params_pruned": params,
            "weight_zero_fraction": round(zeros / params, 6) if params else 0.0,
            "skipped": skipped,
        }
        return PassResult(changed=bool(outcomes), stats=stats)
