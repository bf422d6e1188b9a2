"""Ratio allocation: how many channels each group keeps.

* `uniform`: one keep fraction for every group;
* `budget`: greedy over the cost model, dropping the step of channels with the least
  (normalised) importance per MAC saved until the MAC target is met;
* `precrop`: data-free PreCropping-style layer-wise ratios: a global magnitude threshold
  (the data-free pruning-at-initialisation baseline) gives each layer a density; a group
  keeps sqrt(density) of its channels (its layers lose input and output channels) and one
  common scale factor meets the MAC target;
* explicit layer-wise keep ratios (`glob=keep`) override any of these per group.

Kept counts are multiples of the group's `multiple` and never zero.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.allocator import greedy_steps
from sparsec.errors import PipelineError
from sparsec.layers import matches_any
from sparsec.passes.structural.groups import DependencyGraph, Group
from sparsec.targets import Target

ALLOCATIONS = ("uniform", "budget", "precrop", "sensitivity")


def round_keep(group: Group, keep_fraction: float) -> int:
    m = group.multiple
    k = int(round(keep_fraction * group.size / m)) * m
    return int(min(group.size, max(m, k)))


def removal_mask(dg: DependencyGraph, keeps: dict[int, int], scores: np.ndarray) -> np.ndarray:
    """Remove the lowest-scoring channels of each group down to its kept count."""
    removed = np.zeros(dg.n_channels, dtype=bool)
    by_id = {g.id: g for g in dg.groups}
    for gid, k in keeps.items():
        g = by_id[gid]
        if k >= g.size:
            continue
        order = np.argsort(scores[g.classes], kind="stable")
        removed[g.classes[order[: g.size - k]]] = True
    return removed


class LatencyCost:
    """A view of a DependencyGraph whose `macs()` is the roofline latency in nanoseconds.

    The allocations minimise and bound `dg.macs(...)`; handing them this view makes the same
    code allocate against a latency target (the cost model's per-layer prediction) instead.
    """

    def __init__(self, dg: DependencyGraph, target: Target) -> None:
        self._dg, self._target = dg, target

    def macs(self, kept_sizes: np.ndarray | None = None) -> int:
        return int(self._dg.latency_ms(kept_sizes, self._target) * 1e6)

    def __getattr__(self, name: str):  # noqa: ANN204  (everything else is the graph's)
        return getattr(self._dg, name)


def plan_macs(dg: DependencyGraph, removed: np.ndarray) -> int:
    return dg.macs(dg.kept_sizes(dg.removed_elements(removed)))


def parse_layer_ratios(specs: tuple[str, ...]) -> list[tuple[str, float]]:
    out = []
    for spec in specs:
        pattern, sep, value = spec.rpartition("=")
        try:
            keep = float(value)
        except ValueError:
            keep = -1.0
        if not sep or not pattern or not 0.0 < keep <= 1.0:
            raise PipelineError(f"layer ratio '{spec}': expected GLOB=KEEP with 0 < KEEP <= 1")
        out.append((pattern, keep))
    return out


def matches(group: Group, pattern: str) -> bool:
    """Whether the glob names the group or one of its parameters."""
    return matches_any([group.name, *(p.name for p in group.params)], [pattern])


def fit_scale(
    dg: DependencyGraph,
    groups: list[Group],
    base: dict[int, float],
    scores: np.ndarray,
    target_macs: int,
    fixed: dict[int, float],
) -> dict[int, int]:
    """Largest common scale s of `base` keep fractions whose plan meets `target_macs`."""

    def keeps(s: float) -> dict[int, int]:
        return {
            g.id: round_keep(g, fixed.get(g.id, min(1.0, s * base[g.id]))) for g in groups
        }

    lo, hi = 0.0, 1.0 / max(min(base.values()), 1e-6)
    if plan_macs(dg, removal_mask(dg, keeps(lo), scores)) > target_macs:
        return keeps(lo)  # even the smallest model misses the target: the best we can do
    for _ in range(30):
        mid = (lo + hi) / 2
        if plan_macs(dg, removal_mask(dg, keeps(mid), scores)) <= target_macs:
            lo = mid
        else:
            hi = mid
    return keeps(lo)


def uniform_keeps(dg: DependencyGraph, groups: list[Group], scores: np.ndarray, target: int, fixed: dict[int, float]) -> dict[int, int]:
    return fit_scale(dg, groups, {g.id: 1.0 for g in groups}, scores, target, fixed)


def precrop_keeps(
    dg: DependencyGraph, model: ir.Model, groups: list[Group], scores: np.ndarray, target: int, fixed: dict[int, float]
) -> dict[int, int]:
    densities = layer_densities(dg, model, target / max(dg.macs(), 1))
    base = {}
    for g in groups:
        ds = [densities[p.name] for p in g.params if p.name in densities]
        base[g.id] = float(np.sqrt(np.mean(ds))) if ds else 1.0
    return fit_scale(dg, groups, base, scores, target, fixed)


def layer_densities(dg: DependencyGraph, model: ir.Model, mac_fraction: float) -> dict[str, float]:
    """Per weight: the density a global |w| threshold leaves, MAC-weighted to `mac_fraction`."""
    weights: dict[str, np.ndarray] = {}
    inits = model.graph.initializers
    for node in model.graph:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            for v in node.inputs[1:2]:
                src = v
                while src is not None and not src.is_initializer() and src.producer() is not None and src.producer().op_type == "Transpose":
                    src = src.producer().inputs[0]
                if src is not None and src.name in inits and inits[src.name].const_value is not None:
                    weights[src.name] = np.abs(inits[src.name].const_value.numpy().reshape(-1))
    if not weights:
        return {}
    sizes = {n: w.size for n, w in weights.items()}
    everything = np.sort(np.concatenate(list(weights.values())))
    lo, hi = 0, len(everything) - 1
    # Binary search on the threshold so that the parameter-weighted density matches.
    while lo < hi:
        mid = (lo + hi) // 2
        tau = everything[mid]
        kept = sum(np.count_nonzero(w > tau) for w in weights.values())
        if kept / len(everything) > mac_fraction:
            lo = mid + 1
        else:
            hi = mid
    tau = everything[lo]
    return {n: max(np.count_nonzero(w > tau) / sizes[n], 1e-3) for n, w in weights.items()}


def budget_keeps(
    dg: DependencyGraph, groups: list[Group], scores: np.ndarray, target: int, fixed: dict[int, float]
) -> dict[int, int]:
    """Greedy (`sparsec.allocator.greedy_steps`): repeatedly drop the cheapest step of
    channels (normalised importance lost per MAC saved) until the MAC target is met."""
    keeps = {g.id: (round_keep(g, fixed[g.id]) if g.id in fixed else g.size) for g in groups}
    order = {g.id: g.classes[np.argsort(scores[g.classes], kind="stable")] for g in groups}
    norm = {g.id: np.sort(scores[g.classes] / max(scores[g.classes].mean(), 1e-12)) for g in groups}
    by_id = {g.id: g for g in groups}
    removed = removal_mask(dg, keeps, scores)
    state = {"macs": plan_macs(dg, removed)}

    def next_drop(gid: int) -> np.ndarray | None:
        g, k = by_id[gid], keeps[gid]
        if gid in fixed or k - g.multiple < g.multiple:
            return None
        return order[gid][g.size - k : g.size - k + g.multiple]

    def step_cost(gid: int) -> float | None:
        drop = next_drop(gid)
        if drop is None:
            return None
        trial = removed.copy()
        trial[drop] = True
        saved = state["macs"] - plan_macs(dg, trial)
        if saved <= 0:
            return None
        g, k = by_id[gid], keeps[gid]
        return float(norm[gid][g.size - k : g.size - k + g.multiple].sum()) / saved

    def take_step(gid: int) -> None:
        removed[next_drop(gid)] = True
        keeps[gid] -= by_id[gid].multiple
        state["macs"] = plan_macs(dg, removed)

    greedy_steps([g.id for g in groups], step_cost, take_step, lambda: state["macs"] <= target)  # type: ignore[arg-type]
    return keeps
