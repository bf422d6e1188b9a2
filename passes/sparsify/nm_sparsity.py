"""`nm-sparsity`: prune weights to an N:M pattern along their reduction axis.

The pruned weight stays an initializer under its original name (so the decision maps back to
the PyTorch `state_dict` key) and is marked by a `com.sparsec.NMSparse` node, which backends
lower to dense weights or to sparse kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.layers import Layer
from sparsec.nm_pattern import validate_nm
from sparsec.passes.analysis.cost_model import CostModel
from sparsec.passes.sparsify.criteria import CRITERIA, check_criterion
from sparsec.passes.sparsify.marking import mark_nm
from sparsec.passes.sparsify.options import ExpertLayerSelection, ReconstructionOptions
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass


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


# MoE ops (ExpertLayerSelection): each expert projection (w1, w2, w_up) is pruned N:M per expert
# along its reduction axis (moefy-ffn runs first in the presets). Data criteria (wanda,
# sparsegpt) prune them by magnitude and say so: an expert sees only its routed tokens, so
# there is no one input view to collect statistics on.
@register_pass
@dataclass(frozen=True)
class NMSparsity(ExpertLayerSelection, ReconstructionOptions, Pass):
    name = "nm-sparsity"
    summary = "Prune weights of MatMul/Gemm/Conv layers and MoE experts to an N:M pattern along the reduction axis."
    exact = False
    preserves = ()


    n: int = option(2, "kept weights per group")
    m: int = option(4, "group size along the reduction axis")
    criterion: str = option("magnitude", "which weights to keep: magnitude, wanda or sparsegpt (these need calibration data)")
    sequential: bool = option(True, "data criteria: collect each layer's inputs with the layers before it already pruned")
    k_multiple: int = option(1, "skip layers whose reduction axis is not a multiple of this (a hardware tile: 32 on sparse tensor cores)")
    only_faster: bool = option(
        False,
        "skip layers the target runs no faster sparse, as measured on this machine by the tuner "
        "(sparsec tune; fixed thresholds when tuning is off): pruning them would only cost accuracy",
    )

    def __post_init__(self) -> None:
        validate_nm(self.n, self.m)
        check_criterion(self.criterion, self.name)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        # Imported here: apply.py builds on this module (skip_reason).
        from sparsec.passes.sparsify.apply import prune_selected
        from sparsec.passes.sparsify.patterns import Pattern

        def skip(layer: Layer) -> str | None:
            reason = skip_reason(layer, self.n, self.m, self.min_params)
            k = layer.weight.const_value.shape[layer.reduction_axis]
            if reason is None and self.k_multiple > 1 and k % self.k_multiple:
                # The target would run it dense anyway: pruning would only cost accuracy.
                reason = f"reduction axis has {k} elements, not a multiple of the target's tile {self.k_multiple}"
            # MoE experts are not tuned: at decode the kernel streams only the selected experts'
            # packed bytes, and the per-layer tuner times MatMul/Gemm shapes only.
            if reason is None and self.only_faster and not _is_moe(layer):
                reason = self._slower_reason(model, layer, ctx, plan)
            return reason

        plan: dict[str, object] = {}
        return prune_selected(self, model, ctx, Pattern("nm", n=self.n, m=self.m), skip, with_axis=True)

    def _slower_reason(self, model: ir.Model, layer: Layer, ctx: PassContext, plan: dict[str, object]) -> str | None:
        """Why the target would not run this layer faster sparse (None: it would)."""
        if not plan:  # every candidate at once: one measurement per distinct shape
            from sparsec.layers import find_layers
            from sparsec.tune.advisor import plan_layers

            candidates = [lay for lay in find_layers(model, self.op_types) if not _is_moe(lay)
                          and self.selects(lay) and skip_reason(lay, self.n, self.m, self.min_params) is None]
            plan.update(plan_layers(model, candidates, self.n, self.m, ctx))
            plan.setdefault("", "")  # planned, even if empty
        choice = plan.get(layer.weight.name)
        if choice is None:
            return None
        if isinstance(choice, str):
            return f"not pruned: the target has no measured faster kernel ({choice})"
        if not choice.sparse:
            return f"not pruned: runs no faster sparse on this machine ({choice.reason})"
        return None


def _is_moe(layer: Layer) -> bool:
    return layer.node.domain == DOMAIN and layer.node.op_type == "MoE"


__all__ = ["CRITERIA", "NMSparsity", "CostModel", "mark_nm", "skip_reason"]
