"""Calibration-based crop decisions: the `activation` criterion and `sensitivity` ratios.

* `activation`: a channel's score adds, to its weight norms (l2), the RMS of the
  activations it carries into every contracting op (conv input channels, matmul K) on the
  calibration samples, each axis normalised by its mean: channels that carry little signal
  go first even when their weights are large.
* `sensitivity` (output reconstruction): on small problems a greedy loop measures the
  damage of the joint plan after each candidate step; on larger ones every group is cropped alone to a ladder of kept
  counts on a copy of the model and the damage to the outputs on the calibration samples
  (`sparsec.calib.metrics.DAMAGES`: 1 - mean cosine, or KL) is measured; a greedy pass then
  spends the MAC budget where damage per MAC saved is smallest (damages taken as additive).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsec.allocator import greedy_steps
from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import DAMAGES, Damage
from sparsec.calib.runner import run_outputs, run_values
from sparsec.calib.scan import sensitivity_scan
from sparsec.errors import PipelineError
from sparsec.ir.io import to_proto
from sparsec.passes.structural.cropping import crop_model
from sparsec.passes.structural.groups import DependencyGraph, Group
from sparsec.passes.structural.importance import CALIBRATED_CRITERIA, channel_scores, element_scores
from sparsec.passes.structural.ratios import plan_macs, removal_mask, round_keep
from sparsec.pm.context import PassContext

if TYPE_CHECKING:
    from sparsec.passes.structural.crop_channels import CropChannels

log = logging.getLogger("sparsec.crop")
MAX_LEVELS = 8  # kept counts tried per group by the sensitivity scan
# Up to this many steps in all, sensitivity measures the joint plan after every step (exact
# but quadratic); above it, each group's curve is measured alone and damages are added.
JOINT_MAX_STEPS = 64


def calibration_of(ctx: PassContext) -> CalibrationData:
    if ctx.calibration is None:
        raise PipelineError(
            "pass 'crop-channels': criterion=activation and allocation=sensitivity need calibration data"
        )
    return CalibrationData.load(ctx.calibration)


def activation_scores(dg: DependencyGraph, model: ir.Model, calib: CalibrationData) -> np.ndarray:
    return channel_scores(dg, activation_element_scores(dg, model, calib))


def obs_scores(dg: DependencyGraph, model: ir.Model, calib: CalibrationData) -> np.ndarray:
    from sparsec.passes.structural.obs import obs_element_scores

    return channel_scores(dg, obs_element_scores(dg, model, calib, lambda: activation_element_scores(dg, model, calib)))


def activation_element_scores(dg: DependencyGraph, model: ir.Model, calib: CalibrationData) -> np.ndarray:
    b = dg.builder
    acts = [a for a in sorted(b.contracted) if b.axes[a].value is not None and b.axes[a].value not in model.graph.initializers]
    names = sorted({b.axes[a].value for a in acts})
    produced = {v.name for n in model.graph for v in n.outputs if v is not None}
    names = [n for n in names if n in produced]
    by_name = run_values(model, calib, names)
    scores = element_scores(dg, model, "l2")
    for a in acts:
        info = b.axes[a]
        x = by_name.get(info.value)
        if x is None:
            continue
        x = np.moveaxis(x.astype(np.float64), info.axis, 0).reshape(info.size, -1)
        rms = np.sqrt((x**2).mean(axis=1))
        mean = rms.mean()
        scores[info.base : info.base + info.size] += rms / mean if mean > 0 else rms
    return scores


def _levels(group: Group) -> list[int]:
    steps = list(range(group.size - group.multiple, group.multiple - 1, -group.multiple))
    if len(steps) > MAX_LEVELS:
        idx = np.unique(np.linspace(0, len(steps) - 1, MAX_LEVELS).round().astype(int))
        steps = [steps[i] for i in idx]
    return steps


def sensitivity(
    dg: DependencyGraph, model: ir.Model, groups: list[Group], scores: np.ndarray, calib: CalibrationData, damage_fn: Damage
) -> dict[int, dict[int, float]]:
    """group id -> {kept count: output damage when only that group is cropped to it}."""
    reference = run_outputs(model, calib)
    proto = to_proto(model)

    def trial(g: Group, k: int):  # noqa: ANN202
        def run() -> list[np.ndarray]:
            cropped = ir.serde.deserialize_model(proto)
            crop_model(cropped, dg, removal_mask(dg, {g.id: k}, scores))
            return run_outputs(cropped, calib)

        return run

    found = sensitivity_scan([(g.id, k, trial(g, k)) for g in groups for k in _levels(g)], reference, damage_fn, desc="crop sensitivity")
    return {g.id: {g.size: 0.0, **found.get(g.id, {})} for g in groups}  # type: ignore[misc]


def _damage_at(curve: dict[int, float], k: int) -> float:
    """Damage at kept count k, linear between measured levels."""
    ks = sorted(curve)
    return float(np.interp(k, ks, [curve[x] for x in ks]))


def sensitivity_keeps(
    dg: DependencyGraph,
    groups: list[Group],
    scores: np.ndarray,
    table: dict[int, dict[int, float]],
    target: int,
    fixed: dict[int, float],
) -> dict[int, int]:
    """Greedy (`sparsec.allocator.greedy_steps`) on the measured curves: repeatedly take the
    step of channels with the least extra damage per MAC saved until the target is met."""
    keeps = {g.id: (round_keep(g, fixed[g.id]) if g.id in fixed else g.size) for g in groups}
    by_id = {g.id: g for g in groups}
    state = {"macs": plan_macs(dg, removal_mask(dg, keeps, scores))}

    def step_cost(gid: int) -> float | None:
        g, k = by_id[gid], keeps[gid]
        if gid in fixed or k - g.multiple < g.multiple:
            return None
        trial = dict(keeps)
        trial[gid] = k - g.multiple
        saved = state["macs"] - plan_macs(dg, removal_mask(dg, trial, scores))
        if saved <= 0:
            return None
        extra = _damage_at(table[gid], k - g.multiple) - _damage_at(table[gid], k)
        return max(extra, 0.0) / saved

    def take_step(gid: int) -> None:
        keeps[gid] -= by_id[gid].multiple
        state["macs"] = plan_macs(dg, removal_mask(dg, keeps, scores))

    greedy_steps([g.id for g in groups], step_cost, take_step, lambda: state["macs"] <= target)  # type: ignore[arg-type]
    return keeps


def joint_keeps(
    dg: DependencyGraph,
    model: ir.Model,
    groups: list[Group],
    scores: np.ndarray,
    calib: CalibrationData,
    target: int,
    fixed: dict[int, float],
    damage_fn: Damage,
) -> dict[int, int]:
    """Greedy on measured damage of the *joint* plan: each step tries one more step of every
    group on top of the current plan and keeps the one with least damage per MAC saved."""
    reference = run_outputs(model, calib)
    proto = to_proto(model)
    keeps = {g.id: (round_keep(g, fixed[g.id]) if g.id in fixed else g.size) for g in groups}
    by_id = {g.id: g for g in groups}

    def damage(plan: dict[int, int]) -> float:
        trial = ir.serde.deserialize_model(proto)
        crop_model(trial, dg, removal_mask(dg, plan, scores))
        return damage_fn(reference, run_outputs(trial, calib))

    current_macs = plan_macs(dg, removal_mask(dg, keeps, scores))
    current_damage = damage(keeps) if current_macs < dg.macs() else 0.0
    while current_macs > target:
        best = None
        for gid, g in by_id.items():
            if gid in fixed or keeps[gid] - g.multiple < g.multiple:
                continue
            plan = dict(keeps)
            plan[gid] -= g.multiple
            macs = plan_macs(dg, removal_mask(dg, plan, scores))
            if macs >= current_macs:
                continue
            d = damage(plan)
            # Overshooting the target is not a saving: count only MACs down to it.
            rate = max(d - current_damage, 0.0) / (current_macs - max(macs, target))
            if best is None or rate < best[0]:
                best = (rate, plan, macs, d)
        if best is None:
            break
        _, keeps, current_macs, current_damage = best
    return keeps


def calibrated_plan(
    p: CropChannels, model: ir.Model, dg: DependencyGraph, groups: list[Group], fixed: dict[int, float], ctx: PassContext
) -> tuple[np.ndarray, dict[int, int]]:
    calib = calibration_of(ctx)
    from sparsec.passes.structural.importance import importance

    if p.criterion in CALIBRATED_CRITERIA:
        scores = (obs_scores if p.criterion == "obs" else activation_scores)(dg, model, calib)
    else:
        scores = importance(dg, model, p.criterion)
    if p.macs <= 0 or p.allocation != "sensitivity":  # calibrated scores, any other allocation
        keeps = p.keeps_from_scores(dg, model, groups, scores, fixed)
    elif sum(g.size // g.multiple for g in groups) <= JOINT_MAX_STEPS:
        keeps = joint_keeps(dg, model, groups, scores, calib, int(dg.macs() * (1.0 - p.macs)), fixed, DAMAGES[p.damage])
    else:
        table = sensitivity(dg, model, groups, scores, calib, DAMAGES[p.damage])
        for gid, curve in table.items():
            ctx.record(p.name, next(g.name for g in groups if g.id == gid), sensitivity={str(k): round(v, 6) for k, v in sorted(curve.items())})
        keeps = sensitivity_keeps(dg, groups, scores, table, int(dg.macs() * (1.0 - p.macs)), fixed)
    return removal_mask(dg, keeps, scores), keeps
