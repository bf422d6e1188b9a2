"""The measurement protocol (DESIGN.md §5): side by side, warm-up, median of many runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

SLOW_RUN_S = 0.100  # runs slower than this need only MIN_RUNS_SLOW repetitions


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def time_side_by_side(
    fns: dict[str, Callable[[], Any]],
    *,
    min_runs: int = 20,
    min_runs_slow: int = 5,
    warmup: int = 3,
    budget_s: float = 20.0,
    label: str = "benchmark",
) -> dict[str, Timing]:
    """Time each callable side by side, interleaved in blocks so that drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    probe = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        probe[name] = time.perf_counter() - t0
    slowest = max(probe.values())
    runs = min_runs_slow if slowest > SLOW_RUN_S else min_runs
    # Spend more of the budget on more runs when they are cheap, never fewer than required.
    round_s = sum(probe.values()) or 1e-6
    runs = max(runs, min(200, int(budget_s / round_s)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    # Blocked round-robin: each contender runs a block of calls and the first call of each
    # block is discarded, so the previous contender's thread pool spinning down (ONNX
    # Runtime spins its workers after a run) does not land on the next one's timings.
    block = 4
    rounds = max(1, -(-runs // (block - 1)))
    for i in tqdm(range(rounds), desc=label, unit="round", leave=False, disable=None):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            for j in range(block):
                t0 = time.perf_counter()
                fns[name]()
                if j:
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _summary(s) for name, s in samples.items()}


def _summary(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    k = len(ordered)
    return Timing(
        median_ms=statistics.median(ordered),
        p10_ms=ordered[max(0, int(0.1 * (k - 1)))],
        p90_ms=ordered[min(k - 1, int(round(0.9 * (k - 1))))],
        runs=k,
    )
