"""The allocator: how much of a budget each layer (or channel group, head, expert) takes.

Two solvers, used by every family (N:M/unstructured patterns per layer, crop ratios per
channel group; attention heads and experts can use the same):

- `meet_benefit` / `cap_damage`: a multiple-choice knapsack solved by Lagrangian search.
  Each item has options (the first one "do nothing") with a predicted damage (additive
  over items, e.g. from a sensitivity scan) and a benefit (parameters, MACs, bytes or
  predicted milliseconds saved). For a price lambda every item independently picks
  argmin(damage - lambda * benefit); bisection on lambda finds the cheapest choice that
  meets a benefit budget, or the most benefit whose total damage stays under a ceiling.
  The choices lie on each item's convex hull of (benefit, damage), where the optimum of
  the relaxed problem is.
- `greedy_steps`: the greedy budget loop for items that shrink one step at a time (a
  channel group losing `multiple` channels): repeatedly take the step with the least cost
  (damage per unit saved) until the budget is met; costs depend on the steps already
  taken, so they are re-evaluated lazily.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerOptions:
    """The options of one item (a layer): names, predicted damage and benefit of each."""

    name: str
    patterns: list[str]  # patterns[0] is the do-nothing option ("dense")
    damage: np.ndarray  # predicted damage per option (inf: not applicable)
    benefit: np.ndarray  # saving per option (0 for the first)


def _pick(options: list[LayerOptions], lam: float) -> list[int]:
    picks = []
    for o in options:
        score = np.where(np.isfinite(o.damage), o.damage - lam * o.benefit, np.inf)
        picks.append(int(np.argmin(score)))
    return picks


def _totals(options: list[LayerOptions], picks: list[int]) -> tuple[float, float]:
    damage = sum(float(o.damage[i]) for o, i in zip(options, picks, strict=True))
    benefit = sum(float(o.benefit[i]) for o, i in zip(options, picks, strict=True))
    return damage, benefit


def _lambda_range(options: list[LayerOptions]) -> float:
    # Above this price every layer takes its largest-benefit finite option. Options with no
    # benefit never win at a positive price, so they do not set the range (a tiny damage
    # over a zero benefit would push it to ~1e30 and starve the bisection).
    ratios = []
    for o in options:
        useful = np.isfinite(o.damage) & (o.benefit > 0)
        if useful.any():
            ratios.append(float(np.max(o.damage[useful] / o.benefit[useful])))
    return max(ratios + [1.0]) * 10.0


def meet_benefit(options: list[LayerOptions], budget: float, iters: int = 60) -> list[int]:
    """Least total damage with total benefit >= budget (the most benefit if unreachable)."""
    lo, hi = 0.0, _lambda_range(options)
    best = _pick(options, hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        picks = _pick(options, mid)
        if _totals(options, picks)[1] >= budget:
            best, hi = picks, mid
        else:
            lo = mid
    return best


def cap_damage(options: list[LayerOptions], ceiling: float, iters: int = 60) -> list[int]:
    """Most total benefit with total predicted damage <= ceiling."""
    lo, hi = 0.0, _lambda_range(options)
    best = [0] * len(options)
    for _ in range(iters):
        mid = (lo + hi) / 2
        picks = _pick(options, mid)
        if _totals(options, picks)[0] <= ceiling:
            best, lo = picks, mid
        else:
            hi = mid
    return best


def totals(options: list[LayerOptions], picks: list[int]) -> dict[str, float]:
    damage, benefit = _totals(options, picks)
    return {"predicted_damage": damage, "benefit": benefit}


def greedy_steps(
    items: Iterable[Hashable],
    step_cost: Callable[[Hashable], float | None],
    take_step: Callable[[Hashable], None],
    done: Callable[[], bool],
) -> None:
    """Take the cheapest next step of any item until `done()` (or no item can step).

    `step_cost(item)`: the cost of the item's next step (damage or importance lost per unit
    saved), or None when it cannot take one; `take_step(item)` applies it. Costs change as
    other steps are taken, so a popped cost is recomputed and put back unless it is still
    the cheapest (within 0.01%).
    """
    # The index breaks ties (items need not be comparable) and keeps the order deterministic.
    heap = [(c, i, item) for i, item in enumerate(items) if (c := step_cost(item)) is not None]
    heapq.heapify(heap)
    while heap and not done():
        _, i, item = heapq.heappop(heap)
        c = step_cost(item)
        if c is None:
            continue
        if heap and c > heap[0][0] * 1.0001:
            heapq.heappush(heap, (c, i, item))
            continue
        take_step(item)
        if (nxt := step_cost(item)) is not None:
            heapq.heappush(heap, (nxt, i, item))
