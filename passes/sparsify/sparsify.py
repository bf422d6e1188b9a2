"""`sparsify`: prune weights to an unstructured, block or N:M pattern with any criterion.

Unstructured and block results are marked by `com.sparsec.Sparse`, N:M ones by `NMSparse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.layers import Layer
from sparsec.passes.sparsify.apply import pattern_skip_reason, prune_selected
from sparsec.passes.sparsify.criteria import check_criterion
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

        def skip(layer: Layer) -> str | None:
            return pattern_skip_reason(layer, pattern, self.min_params)

        return prune_selected(self, model, ctx, pattern, skip, with_axis=False)
