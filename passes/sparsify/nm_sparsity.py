"""`nm-sparsity`: prune weights to an N:M pattern along their reduction axis.

The pruned weight stays an initializer under its original name (so the decision maps back to
the PyTorch `state_dict` key) and is marked by a `com.sparsec.NMSparse` node, which backends
lower to dense weights or to sparse kernels.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.layers import Layer, find_layers
from sparsec.nm_pattern import nm_mask, validate_nm
from sparsec.passes.analysis.cost_model import CostModel
from sparsec.passes.sparsify.criteria import (
    CRITERIA,
    Reconstruction,
    check_criterion,
    needs_data,
    reconstruction_option,
)
from sparsec.passes.sparsify.marking import mark_nm
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass


def _matches(layer: Layer, patterns: tuple[str, ...]) -> bool:
    return any(
        fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.weight.name, p) for p in patterns
    )


def skip_reason(layer: Layer, n: int, m: int, min_params: int) -> str | None:
    """Why a layer cannot take the pattern, or None if it can."""
    if layer.marker is not None:
        return f"weight already marked {layer.marker.op_type}"
    tensor = layer.weight.const_value
    if tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE):
        return f"weight dtype {tensor.dtype.short_name()} is not floating point"
    if tensor.size < min_params:
        return f"{tensor.size} parameters < min_params={min_params}"
    size = tensor.shape[layer.reduction_axis]
    if size % m:
        return f"reduction axis has {size} elements, not a multiple of m={m}"
    if size < m:
        return f"reduction axis has {size} < m={m} elements"
    users = layer.weight.uses()
    expected = layer.path[-1] if layer.path else layer.node
    if any(user is not expected for user, _ in users):
        return "weight is shared with other ops"
    if layer.node.op_type == "Conv":
        group = layer.node.attributes.get("group")
        if group is not None and group.as_int() > 1 and tensor.shape[1] == 1:
            return "depthwise convolution (one input channel per group)"
    return None


@register_pass
@dataclass(frozen=True)
class NMSparsity(Pass):
    name = "nm-sparsity"
    summary = "Prune weights of MatMul/Gemm/Conv layers to an N:M pattern along the reduction axis."
    exact = False
    preserves = ()

    n: int = option(2, "kept weights per group")
    m: int = option(4, "group size along the reduction axis")
    op_types: tuple[str, ...] = option(("MatMul", "Gemm", "Conv"), "op types to prune")
    include: tuple[str, ...] = option(("*",), "globs on layer or weight names to prune")
    exclude: tuple[str, ...] = option((), "globs on layer or weight names to leave dense")
    min_params: int = option(1024, "skip weights with fewer parameters")
    criterion: str = option("magnitude", "which weights to keep: magnitude, wanda or sparsegpt (these need calibration data)")
    sequential: bool = option(True, "data criteria: collect each layer's inputs with the layers before it already pruned")
    damp: float = reconstruction_option("damp")
    correct: bool = reconstruction_option("correct")
    fit_bias: bool = reconstruction_option("fit_bias")
    refit_norms: bool = reconstruction_option("refit_norms")
    refit_kept: bool = reconstruction_option("refit_kept")
    residual: bool = reconstruction_option("residual")

    def __post_init__(self) -> None:
        validate_nm(self.n, self.m)
        check_criterion(self.criterion, self.name)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        pruned, skipped = [], {}
        chosen: list[Layer] = []  # for data-driven criteria, pruned together below
        total = zeros = 0
        for layer in find_layers(model, self.op_types):
            if not _matches(layer, self.include) or _matches(layer, self.exclude):
                continue
            reason = skip_reason(layer, self.n, self.m, self.min_params)
            if reason is not None:
                skipped[layer.name] = reason
                ctx.record(self.name, layer.name, weight=layer.weight.name, decision="skip", reason=reason)
                continue
            if needs_data(self.criterion):
                chosen.append(layer)
                continue
            w = layer.weight.const_value.numpy()
            mask = nm_mask(np.abs(w.astype(np.float32)), self.n, self.m, layer.reduction_axis)
            new = np.where(mask, w, np.zeros_like(w))
            err = float(np.linalg.norm((w - new).astype(np.float64)) / max(np.linalg.norm(w.astype(np.float64)), 1e-30))
            mark_nm(model, layer, new, self.n, self.m)
            pruned.append(layer.name)
            total += w.size
            zeros += int(np.count_nonzero(new == 0))
            ctx.record(
                self.name,
                layer.name,
                weight=layer.weight.name,
                op_type=layer.node.op_type,
                decision=f"{self.n}:{self.m}",
                axis=layer.reduction_axis,
                criterion=self.criterion,
                weight_rel_error=round(err, 6),
            )
        if chosen:
            total, zeros = self._run_data_criterion(model, ctx, chosen, pruned, total, zeros)
        stats = {
            "layers_pruned": len(pruned),
            "layers_skipped": len(skipped),
            "params_pruned": total,
            "weight_zero_fraction": round(zeros / total, 6) if total else 0.0,
            "skipped": skipped,
        }
        return PassResult(changed=bool(pruned), stats=stats)

    def _run_data_criterion(
        self, model: ir.Model, ctx: PassContext, layers: list[Layer], pruned: list[str], total: int, zeros: int
    ) -> tuple[int, int]:
        # Imported here: apply.py builds on this module (skip_reason).
        from sparsec.calib.stats import require_calibration
        from sparsec.passes.sparsify.apply import apply_plan, record_outcomes
        from sparsec.passes.sparsify.patterns import Pattern

        calib = require_calibration(ctx, f"nm-sparsity{{criterion={self.criterion}}}")
        pattern = Pattern("nm", n=self.n, m=self.m)
        outcomes = apply_plan(model, [(layer, pattern) for layer in layers], self.criterion, calib, sequential=self.sequential, recon=Reconstruction.of(self))
        pruned.extend(o.layer for o in outcomes)
        params, new_zeros = record_outcomes(ctx, self.name, layers, outcomes, with_axis=True)
        total, zeros = total + params, zeros + new_zeros
        return total, zeros


__all__ = ["CRITERIA", "NMSparsity", "CostModel", "mark_nm", "skip_reason"]
