"""The shared allocator's multiple-choice knapsack (`meet_benefit`, `cap_damage`)."""

from __future__ import annotations

import numpy as np

from sparsec.allocator import LayerOptions, cap_damage, meet_benefit, totals


def _item(name: str, damage: list[float], benefit: list[float]) -> LayerOptions:
    return LayerOptions(name, [f"o{i}" for i in range(len(damage))], np.array(damage), np.array(benefit))


def test_meet_benefit_spends_damage_where_it_is_cheapest() -> None:
    items = [_item("cheap", [0.0, 0.01, 0.05], [0.0, 10.0, 20.0]), _item("dear", [0.0, 0.5, 2.0], [0.0, 10.0, 20.0])]
    picks = meet_benefit(items, 20.0)
    assert picks == [2, 0]
    assert totals(items, picks) == {"predicted_damage": 0.05, "benefit": 20.0}


def test_zero_benefit_options_do_not_starve_the_price_search() -> None:
    # An option that saves nothing but has a small damage (1e-6) once set the price
    # range to ~1e25: 60 bisection steps then never left "take the most benefit everywhere".
    items = [_item(f"h{i}", [0.0, 0.5, 0.1, 1e-6], [0.0, 10.0, 5.0, 0.0]) for i in range(4)]
    picks = meet_benefit(items, 20.0)
    benefit = totals(items, picks)["benefit"]
    assert 20.0 <= benefit < 40.0 and picks.count(2) >= 2


def test_cap_damage_keeps_total_damage_under_the_ceiling() -> None:
    items = [_item("a", [0.0, 0.1, 0.4], [0.0, 5.0, 9.0]), _item("b", [0.0, 0.2, 0.3], [0.0, 4.0, 8.0])]
    picks = cap_damage(items, 0.35)
    assert totals(items, picks)["predicted_damage"] <= 0.35 + 1e-12
