"""Reviewing a crop plan: what each group buys and what it costs, and refusing bad buys.

An allocation spends a MAC budget over the groups it is given; it does not ask whether a
group is worth cropping at all. On a model where almost every MAC sits in pinned groups
(e.g. a Mixtral export: batched experts, GatherND routing) it crops the few small groups
that remain as deep as they go, removes a few percent of the MACs and damages the outputs
badly. The review measures, per cropped group:

* `macs_saved`: the fraction of the model's MACs that cropping this group alone removes;
* `damage`: with calibration data, the measured output damage of cropping this group alone
  (1 - mean cosine over the calibration samples); without, a data-free proxy: the fraction
  of the group's importance (normalised L2 weight energy, `importance.py`) that goes,
  doubled for lossy groups (a norm over the channels sees fewer of them).

and refuses (recording the reason) a group whose saving is below `min_group_saving`, or
whose damage per MAC saved is more than `max_damage_ratio` times the plan's median. A MAC
target that the remaining plan reaches less than `min_achieved` of is refused as a whole,
with a warning that says how much could be removed at most. Zero disables each check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from sparsec.passes.structural.groups import DependencyGraph, Group
from sparsec.passes.structural.ratios import plan_macs

if TYPE_CHECKING:
    from sparsec.pm.context import PassContext

log = logging.getLogger("sparsec.crop")

PROXY_METRIC = "proxy: fraction of the group's L2 weight energy removed (x2 if lossy)"
MEASURED_METRIC = "measured: 1 - mean cosine of the outputs on the calibration data"


@dataclass
class GroupReview:
    group: int
    name: str
    channels: int
    kept: int
    macs_saved: float  # fraction of the model's MACs removed by cropping this group alone
    damage: float
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"macs_saved": round(self.macs_saved, 6), "damage": round(self.damage, 6)}
        if self.refused:
            d["refused"] = self.refused
        return d


@dataclass
class PlanReview:
    groups: list[GroupReview] = field(default_factory=list)
    metric: str = PROXY_METRIC
    asked: float = 0.0  # fraction of MACs asked for (0: a channel ratio was asked)
    achieved: float = 0.0  # fraction of MACs the reviewed plan removes
    possible: float = 0.0  # fraction of MACs that cropping every candidate to its minimum removes
    warning: str | None = None

    @property
    def refused(self) -> set[int]:
        return {r.group for r in self.groups if r.refused}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "macs_asked": round(self.asked, 4),
            "macs_removed_fraction": round(self.achieved, 4),
            "macs_possible": round(self.possible, 4),
            "groups_refused": len(self.refused),
            "damage_metric": self.metric,
        }
        if self.warning:
            out["warning"] = self.warning
        return out


def _only(removed: np.ndarray, group: Group) -> np.ndarray:
    mask = np.zeros_like(removed)
    mask[group.classes] = removed[group.classes]
    return mask


def fraction_removed(dg: DependencyGraph, removed: np.ndarray, total: int) -> float:
    return 0.0 if total <= 0 else 1.0 - plan_macs(dg, removed) / total


def possible_removal(dg: DependencyGraph, groups: list[Group]) -> float:
    """MACs removed if every candidate group kept only its channel multiple (the most a crop can do)."""
    removed = np.zeros(dg.n_channels, dtype=bool)
    for g in groups:
        removed[g.classes[: max(g.size - g.multiple, 0)]] = True
    return fraction_removed(dg, removed, dg.macs())


def proxy_damage(group: Group, removed: np.ndarray, scores: np.ndarray) -> float:
    total = float(scores[group.classes].sum())
    gone = float(scores[group.classes][removed[group.classes]].sum())
    # Scores can overflow (a huge constant such as an attention mask's float min counts as a
    # parameter): then the fraction of channels removed stands in.
    frac = gone / total if np.isfinite(total) and total > 0 else float(removed[group.classes].mean())
    return min(1.0, frac * (2.0 if group.lossy else 1.0))


def measured_damages(
    model: ir.Model, dg: DependencyGraph, groups: list[Group], removed: np.ndarray, ctx: PassContext
) -> dict[int, float]:
    """Output damage of cropping each group alone, on the calibration samples."""
    from sparsec.calib.metrics import cosine_damage
    from sparsec.calib.runner import run_outputs
    from sparsec.passes.structural.calibrated import calibration_of
    from sparsec.passes.structural.cropping import crop_model

    calib = calibration_of(ctx)
    reference = run_outputs(model, calib)
    out = {}
    for g in groups:
        # A structural copy: crop_model replaces the tensors it crops (a proto round trip
        # would also lose the folder that file-backed weights are read from).
        copy = model.clone()
        crop_model(copy, dg, _only(removed, g))
        out[g.id] = float(cosine_damage(reference, run_outputs(copy, calib)))
    return out


def review_plan(
    model: ir.Model,
    dg: DependencyGraph,
    candidates: list[Group],
    removed: np.ndarray,
    keeps: dict[int, int],
    scores: np.ndarray,
    ctx: PassContext,
    *,
    asked: float,
    min_group_saving: float,
    max_damage_ratio: float,
    cost: DependencyGraph | None = None,
) -> PlanReview:
    """Review the plan `removed` (see the module docstring); the caller drops refused groups.

    `cost` is the view whose `macs()` the budget is in (the latency view for cost=latency).
    """
    cost = cost or dg
    total = cost.macs()
    cropped = [g for g in candidates if keeps.get(g.id, g.size) < g.size]
    measured = ctx.calibration is not None
    damages = measured_damages(model, dg, cropped, removed, ctx) if measured and cropped else {}
    review = PlanReview(metric=MEASURED_METRIC if measured else PROXY_METRIC, asked=asked)
    for g in cropped:
        damage = damages[g.id] if measured else proxy_damage(g, removed, scores)
        saved = fraction_removed(cost, _only(removed, g), total)
        review.groups.append(GroupReview(g.id, g.name, g.size, int(keeps[g.id]), saved, damage))
    for r in review.groups:
        if min_group_saving > 0 and r.macs_saved < min_group_saving:
            r.refused = f"saves {100 * r.macs_saved:.2f}% of the MACs (< min_group_saving {100 * min_group_saving:g}%)"
    live = [r for r in review.groups if not r.refused]
    if max_damage_ratio > 0 and len(live) > 1:
        ratios = {r.group: r.damage / max(r.macs_saved, 1e-12) for r in live}
        median = float(np.median(list(ratios.values())))
        for r in live:
            if median > 0 and ratios[r.group] > max_damage_ratio * median:
                r.refused = (
                    f"damage per MAC saved {ratios[r.group] / median:.1f}x the plan's median "
                    f"(> max_damage_ratio {max_damage_ratio:g})"
                )
    review.possible = possible_removal(cost, candidates)
    kept_plan = removed.copy()
    for g in candidates:
        if g.id in review.refused:
            kept_plan[g.classes] = False
    review.achieved = fraction_removed(cost, kept_plan, total)
    return review


def shortfall(review: PlanReview, min_achieved: float) -> bool:
    """The plan buys too little of what was asked: refuse it as a whole and say why."""
    if review.asked <= 0 or review.achieved >= min_achieved * review.asked:
        if review.asked > 0 and review.achieved < 0.9 * review.asked:
            review.warning = (
                f"crop-channels: asked for {100 * review.asked:.0f}% fewer MACs, the plan removes "
                f"{100 * review.achieved:.1f}% (at most {100 * review.possible:.1f}% can be removed: the rest is in pinned groups)"
            )
        return False
    review.warning = (
        f"crop-channels: asked for {100 * review.asked:.0f}% fewer MACs, but at most {100 * review.possible:.1f}% can be "
        f"removed and the reviewed plan removes {100 * review.achieved:.1f}% (< min_achieved {min_achieved:g} of the target): "
        "nothing cropped (crop-channels{min_achieved=0} crops anyway)"
    )
    for r in review.groups:
        r.refused = r.refused or "the whole plan falls short of the target (min_achieved)"
    review.achieved = 0.0
    return True


__all__ = ["GroupReview", "PlanReview", "possible_removal", "review_plan", "shortfall"]
