"""Choosing one pattern per layer: a multiple-choice knapsack solved by Lagrangian search.

Each layer has options (dense first) with a predicted damage (from `layer-sensitivity`,
additive over layers) and a benefit (parameters, MACs, bytes or predicted milliseconds
saved). For a price lambda every layer independently picks argmin(damage - lambda * benefit);
bisection on lambda finds the cheapest choice that meets a benefit budget, or the most
benefit whose total damage stays under a ceiling. The choices lie on each layer's convex
hull of (benefit, damage), which is where the optimum of the relaxed problem is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerOptions:
    name: str
    patterns: list[str]  # patterns[0] is "dense"
    damage: np.ndarray  # predicted damage per pattern (inf: not applicable)
    benefit: np.ndarray  # saving per pattern (0 for dense)


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
    # Above this price every layer takes its largest-benefit finite option.
    ratios = [
        float(np.max(o.damage[np.isfinite(o.damage)] / np.maximum(o.benefit[np.isfinite(o.damage)], 1e-30)))
        for o in options
    ]
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
