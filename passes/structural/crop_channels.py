"""`crop-channels`: remove coupled channels and slice every weight into smaller dense ops.

Uses the `dependency-groups` analysis; the kept count of each group comes from a MAC target
(`macs`, the fraction of MACs to remove) or a uniform channel ratio (`ratio`), with the
allocation and criterion chosen by options. Every removed index is recorded per group and
per original parameter name (the `state_dict` key for captured torch models), so the same
crop can be replayed on the module (see replay.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.errors import PipelineError
from sparsec.ir.shapes import infer_concrete_shapes, shape_proto
from sparsec.passes.analysis.dependency_groups import DependencyGroups, dependency_groups
from sparsec.passes.structural.crop_plan import PlanReview, review_plan, shortfall
from sparsec.passes.structural.cropping import crop_model
from sparsec.passes.structural.groups import DependencyGraph, Group
from sparsec.passes.structural.importance import CALIBRATED_CRITERIA, CRITERIA, importance
from sparsec.passes.structural.ratios import (
    ALLOCATIONS,
    LatencyCost,
    budget_keeps,
    matches,
    parse_layer_ratios,
    plan_macs,
    precrop_keeps,
    removal_mask,
    round_keep,
    uniform_keeps,
)
from sparsec.passes.structural.shape_folding import fold_shape_computations
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass
from sparsec.targets import get_target

log = logging.getLogger("sparsec.crop")


@register_pass
@dataclass(frozen=True)
class CropChannels(Pass):
    name = "crop-channels"
    summary = "Remove coupled channels (dependency groups) and slice weights, biases, norms and shape constants."
    exact = False

    macs: float = option(0.0, "fraction of MACs to remove, 0 < macs < 1 (0: use ratio)")
    ratio: float = option(0.0, "fraction of channels to remove from every prunable group (when macs=0)")
    allocation: str = option("uniform", "ratios for a MAC target: uniform, budget, precrop, sensitivity")
    criterion: str = option("l2", "which channels go: l1, l2, bn, activation, obs (least output error after refitting the consumer)")
    multiple: int = option(0, "kept channel counts are multiples of this (0: the target's)")
    layer_ratios: tuple[str, ...] = option((), "GLOB=KEEP layer-wise keep ratios (group or parameter globs)")
    exclude: tuple[str, ...] = option((), "globs of group or parameter names to leave uncropped")
    cost: str = option("macs", "what the `macs` fraction is of: macs, or latency (the cost model's roofline per layer)")
    damage: str = option("cosine", "sensitivity's output damage: cosine (any output) or kl (outputs are logits)")
    head_dims: bool = option(True, "also crop within-head dims (the inner factor of a reshape into heads); false: whole heads only")
    lossy_groups: bool = option(True, "also crop channels that a norm over channels sees (LayerNorm, GroupNorm)")
    min_group_saving: float = option(0.005, "with macs: refuse a group whose crop saves less than this fraction of the MACs (0: off)")
    max_damage_ratio: float = option(10.0, "with macs: refuse a group whose damage per MAC saved exceeds this multiple of the plan's median (0: off)")
    min_achieved: float = option(0.5, "crop nothing when the reviewed plan removes less than this fraction of the asked MACs (0: off)")
    reconstruct: bool = option(True, "with calibration data: refit the layers consuming cropped channels to the dense outputs (least squares + bias compensation)")
    reconstruct_damp: float = option(0.01, "ridge damping of the reconstruction, relative to the mean input energy (0: chosen per layer by cross-validation)")
    reconstruct_target: str = option("residual", "what a refit reproduces: layer (the dense layer's output) or residual (also the crop's error upstream in the residual stream the layer adds to)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.macs < 1.0 or not 0.0 <= self.ratio < 1.0:
            raise PipelineError("pass 'crop-channels': macs and ratio must lie in [0, 1)")
        if self.allocation not in ALLOCATIONS:
            raise PipelineError(f"pass 'crop-channels': unknown allocation '{self.allocation}' (known: {', '.join(ALLOCATIONS)})")
        if self.criterion not in CRITERIA:
            raise PipelineError(f"pass 'crop-channels': unknown criterion '{self.criterion}' (known: {', '.join(CRITERIA)})")
        if self.cost not in ("macs", "latency"):
            raise PipelineError(f"pass 'crop-channels': unknown cost '{self.cost}' (known: macs, latency)")
        if self.damage not in ("cosine", "kl"):
            raise PipelineError(f"pass 'crop-channels': unknown damage '{self.damage}' (known: cosine, kl)")
        if self.min_group_saving < 0 or self.max_damage_ratio < 0 or not 0 <= self.min_achieved <= 1:
            raise PipelineError("pass 'crop-channels': min_group_saving, max_damage_ratio >= 0 and min_achieved in [0, 1]")
        if self.multiple < 0:
            raise PipelineError("pass 'crop-channels': multiple must be >= 0")
        if self.reconstruct_target not in ("layer", "residual"):
            raise PipelineError(f"pass 'crop-channels': unknown reconstruct_target '{self.reconstruct_target}' (known: layer, residual)")
        if not self.reconstruct_damp >= 0:
            raise PipelineError("pass 'crop-channels': reconstruct_damp must be >= 0")
        parse_layer_ratios(self.layer_ratios)

    def analyse(self, model: ir.Model, ctx: PassContext) -> DependencyGraph:
        if self.multiple:
            return dependency_groups(model, dims=ctx.dims, multiple=self.multiple)
        return ctx.analysis(DependencyGroups, model)

    def candidates(self, dg: DependencyGraph, skip: set[int] = frozenset()) -> list[Group]:  # type: ignore[assignment]
        out = []
        inner = inner_factor_channels(dg) if not self.head_dims else np.zeros(0, dtype=np.int64)
        for g in dg.prunable_groups():
            if g.id in skip or np.isin(g.classes, inner).any():
                continue
            if any(matches(g, pat) for pat in self.exclude):
                continue
            if g.lossy and not self.lossy_groups:
                continue
            out.append(g)
        return out

    def plan(self, model: ir.Model, dg: DependencyGraph, ctx: PassContext) -> tuple[np.ndarray, dict[int, int]]:
        """The reviewed plan: removed channels and kept counts (refused groups keep all)."""
        removed, keeps, _ = self.reviewed_plan(model, dg, ctx)
        return removed, keeps

    def reviewed_plan(self, model: ir.Model, dg: DependencyGraph, ctx: PassContext) -> tuple[np.ndarray, dict[int, int], PlanReview]:
        """Allocate, review (crop_plan.py), and allocate again without the refused groups."""
        refused: set[int] = set()
        reviews: dict[int, object] = {}
        scores = importance(dg, model, "l2" if self.criterion in CALIBRATED_CRITERIA else self.criterion)
        cost = LatencyCost(dg, get_target(ctx.target)) if self.cost == "latency" else dg
        for _ in range(4):  # refusals only grow, so this settles; a few rounds suffice
            removed, keeps = self.allocate(model, dg, ctx, refused)
            review = review_plan(
                model, dg, self.candidates(dg, refused), removed, keeps, scores, ctx, asked=self.macs,
                # A channel ratio is an explicit per-group request: reported, never refused.
                min_group_saving=self.min_group_saving if self.macs > 0 else 0.0,
                max_damage_ratio=self.max_damage_ratio if self.macs > 0 else 0.0,
                cost=cost,  # type: ignore[arg-type]
            )
            for r in review.groups:
                if r.refused:
                    reviews.setdefault(r.group, r)
            if not review.refused:
                break
            refused |= review.refused
        else:
            removed, keeps = self.allocate(model, dg, ctx, refused)
        review.groups = [r for r in review.groups if not r.refused] + list(reviews.values())  # type: ignore[misc]
        for r in review.groups:
            if r.refused:
                removed[dg.groups[r.group].classes] = False
                keeps.pop(r.group, None)
        review.achieved = 1.0 - plan_macs(cost, removed) / max(cost.macs(), 1)  # type: ignore[arg-type]
        if shortfall(review, self.min_achieved):
            removed, keeps = np.zeros(dg.n_channels, dtype=bool), {}
        return removed, keeps, review

    def allocate(
        self, model: ir.Model, dg: DependencyGraph, ctx: PassContext, skip: set[int] = frozenset()  # type: ignore[assignment]
    ) -> tuple[np.ndarray, dict[int, int]]:
        """The allocation alone (no review), over the candidate groups not in `skip`."""
        groups = self.candidates(dg, skip)
        if not groups:  # nothing can be cropped: an empty plan, not an allocation over nothing
            return np.zeros(dg.n_channels, dtype=bool), {}
        if self.cost == "latency":
            dg = LatencyCost(dg, get_target(ctx.target))  # type: ignore[assignment]
        fixed: dict[int, float] = {}
        for pattern, keep in parse_layer_ratios(self.layer_ratios):
            for g in groups:
                if matches(g, pattern):
                    fixed.setdefault(g.id, keep)
        if self.criterion in CALIBRATED_CRITERIA or self.allocation == "sensitivity":
            from sparsec.passes.structural.calibrated import calibrated_plan

            return calibrated_plan(self, model, dg, groups, fixed, ctx)
        scores = importance(dg, model, self.criterion)
        keeps = self.keeps_from_scores(dg, model, groups, scores, fixed)
        return removal_mask(dg, keeps, scores), keeps

    def keeps_from_scores(
        self, dg: DependencyGraph, model: ir.Model, groups: list, scores: np.ndarray, fixed: dict[int, float]
    ) -> dict[int, int]:
        """Channels kept per group for the uniform, budget and precrop allocations (or a fixed
        ratio without a MAC target), whatever criterion produced `scores`."""
        if self.macs <= 0:
            return {g.id: round_keep(g, fixed.get(g.id, 1.0 - self.ratio)) for g in groups}
        target = int(dg.macs() * (1.0 - self.macs))
        if self.allocation == "budget":
            return budget_keeps(dg, groups, scores, target, fixed)
        if self.allocation == "precrop":
            return precrop_keeps(dg, model, groups, scores, target, fixed)
        return uniform_keeps(dg, groups, scores, target, fixed)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        folded = fold_shape_computations(model)
        if folded:
            ctx.analyses.invalidate()
        dg = self.analyse(model, ctx)
        removed, keeps, review = self.reviewed_plan(model, dg, ctx)
        self.record_review(dg, review, ctx)
        macs_before = dg.macs()
        macs_after = plan_macs(dg, removed)
        if not removed.any():
            stats = {"macs_before": macs_before, "macs_after": macs_before, "groups_cropped": 0, "shape_nodes_folded": folded}
            return PassResult(bool(folded), {**stats, **review.stats()})
        target = get_target(ctx.target)
        dense = model.clone() if self.reconstruct and ctx.calibration is not None else None
        result = crop_model(model, dg, removed)
        reconstruction = self.refit(dense, model, result.params, ctx)
        by_id = {g.id: g for g in dg.groups}
        review_of = {r.group: r for r in review.groups}
        cropped = 0
        for gid, k in sorted(keeps.items()):
            g = by_id[gid]
            if k >= g.size:
                continue
            cropped += 1
            params = {}
            for p in g.params:
                gone = result.params.get((p.name, p.axis))
                if gone is not None:
                    params[f"{p.name}[{p.axis}]"] = {"axis": p.axis, "size": p.size, "removed": gone.tolist()}
            ctx.record(
                self.name,
                g.name,
                group=gid,
                channels=g.size,
                kept=int(k),
                removed_channels=np.flatnonzero(removed[g.classes]).tolist(),
                lossy=g.lossy,
                params=params,
                **(review_of[gid].to_dict() if gid in review_of else {}),
            )
        for (name, axis), gone in sorted(result.params.items()):
            ctx.record(self.name, name, param=name, axis=axis, removed=gone.tolist(), decision="crop")
        stats = {
            "macs_before": macs_before,
            "macs_after": macs_after,
            "mac_reduction": round(macs_before / max(macs_after, 1), 4),
            "predicted_ms_before": round(dg.latency_ms(None, target), 4),
            "predicted_ms_after": round(dg.latency_ms(dg.kept_sizes(dg.removed_elements(removed)), target), 4),
            "groups_cropped": cropped,
            "groups_prunable": len(dg.prunable_groups()),
            "channels_removed": int(removed[~dg.derived].sum()),
            "params_cropped": len(result.params),
            "shape_nodes_folded": folded,
            **reconstruction,
            **review.stats(),
        }
        log.info("crop-channels: MACs %d -> %d (%.2fx), %d groups", macs_before, macs_after, stats["mac_reduction"], cropped)
        return PassResult(True, stats)

    def refit(self, dense: ir.Model | None, model: ir.Model, removed: dict, ctx: PassContext) -> dict:
        """Crop reconstruction (reconstruct.py) of the layers consuming cropped channels."""
        if not self.reconstruct:
            return {"reconstruction": "off"}
        if dense is None:
            return {"reconstruction": "off: no calibration data"}
        from sparsec.passes.structural.calibrated import calibration_of
        from sparsec.passes.structural.reconstruct import reconstruct_consumers

        refits = reconstruct_consumers(dense, model, removed, calibration_of(ctx), damp=self.reconstruct_damp,
                                      target=self.reconstruct_target)
        for r in refits:
            ctx.record(self.name, r.layer, decision="reconstruct", **r.to_dict())
        what = "the dense outputs" if self.reconstruct_target == "layer" else "the dense outputs plus the residual stream's crop error"
        return {"reconstruction": f"least squares to {what}", "layers_reconstructed": len(refits)}

    def record_review(self, dg: DependencyGraph, review: PlanReview, ctx: PassContext) -> None:
        """Refused groups and the reason, in the manifest's decisions; the warning in the log."""
        for r in review.groups:
            if r.refused:
                g = dg.groups[r.group]
                ctx.record(self.name, g.name, group=g.id, channels=g.size, kept=g.size, decision="refused",
                           planned_kept=r.kept, damage_metric=review.metric, **r.to_dict())
        if review.warning:
            log.warning("%s", review.warning)

    def verify(self, model: ir.Model, ctx: PassContext) -> list[str]:
        return check_shapes(model, ctx.dims)


def inner_factor_channels(dg: DependencyGraph) -> np.ndarray:
    """Channels of the innermost factor of every product axis (the dims within each head)."""
    parts = [dg.labels[p.factors[-1]] for p in dg.products if len(p.factors) > 1]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def check_shapes(model: ir.Model, dims: dict[str, int]) -> list[str]:
    """Strict ONNX shape inference on the model with concrete inputs; declared shapes must agree."""
    try:
        inferred = onnx.shape_inference.infer_shapes(shape_proto(model, dims), strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "shape inference failed"
        return [f"shapes after the crop are inconsistent: {first}"]
    problems = []
    declared = {v.name: v.shape for node in model.graph for v in node.outputs if v is not None and v.shape is not None}
    for vi in inferred.graph.value_info:
        mine = declared.get(vi.name)
        if mine is None:
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if k < len(mine) and isinstance(mine[k], int) and d.HasField("dim_value") and d.dim_value != mine[k] and mine[k] != 1:
                problems.append(f"value %{vi.name}: declared axis {k} = {mine[k]}, inferred {d.dim_value}")
                break
    return (problems + channel_mismatches(model, dims))[:5]


def channel_mismatches(model: ir.Model, dims: dict[str, int]) -> list[str]:
    """Channel counts that ONNX shape inference does not check (conv input channels, norms)."""
    info = infer_concrete_shapes(model, dims)
    problems = []
    for node in model.graph:
        shapes = [info.shape(v) if v is not None else None for v in node.inputs]
        if any(s is None for s in shapes[:2]):
            continue
        label = f"{node.op_type} '{node.name}'"
        if node.op_type == "Conv":
            group = node.attributes["group"].as_int() if "group" in node.attributes else 1
            x, w = shapes[0], shapes[1]
            if x[1] != w[1] * group or w[0] % group:
                problems.append(f"{label}: input has {x[1]} channels, weight {w} with group={group}")
        elif node.op_type == "MatMul" and len(shapes[0]) >= 2 and len(shapes[1]) >= 2 and shapes[0][-1] != shapes[1][-2]:
            problems.append(f"{label}: inner sizes {shapes[0][-1]} and {shapes[1][-2]} differ")
        elif node.op_type == "BatchNormalization" and any(s is not None and s[0] != shapes[0][1] for s in shapes[1:]):
            problems.append(f"{label}: parameters do not have {shapes[0][1]} channels")
    return problems


__all__ = ["CropChannels", "check_shapes"]
