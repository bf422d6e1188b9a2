"""The sensitivity scan: the damage of many trial variants of one model, against its outputs.

One loop for every family: a trial is (item, level, run), where `run()` returns the trial
model's outputs on the calibration data (compared with the reference by a `Damage` from
`sparsec.calib.metrics`), a damage computed another way (e.g. a Gram-based proxy), or None
when the level does not apply to the item. Layer patterns (`layer-sensitivity`) and channel
crops (`crop-channels{allocation=sensitivity}`) both scan through here; the tables feed
`sparsec.allocator`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
from tqdm import tqdm

from sparsec.calib.metrics import Damage, Rows, cosine_damage

Trial = tuple[Hashable, Hashable, Callable[[], Sequence[np.ndarray] | float | None]]


def sensitivity_scan(
    trials: Sequence[Trial],
    reference: Sequence[np.ndarray] | None,
    damage: Damage = cosine_damage,
    rows: Rows = None,
    *,
    desc: str = "sensitivity",
    progress: bool = False,
) -> dict[Hashable, dict[Hashable, float]]:
    """item -> level -> damage, in the order of `trials`."""
    table: dict[Hashable, dict[Hashable, float]] = {}
    for item, level, run in tqdm(trials, desc=desc, unit="trial", disable=not progress):
        result = run()
        if result is None:
            continue
        if isinstance(result, (int, float)):
            value = float(result)
        else:
            if reference is None:
                raise ValueError("sensitivity_scan: a trial returned outputs but no reference outputs were given")
            value = float(damage(reference, result, rows))
        table.setdefault(item, {})[level] = value
    return table


__all__ = ["Trial", "sensitivity_scan"]
