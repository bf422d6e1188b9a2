"""compare_interleaved: blocks of BLOCK_MS, shortened only when min_rounds of them would overrun
the budget (the tests' quick tuning budget asks for a quick look)."""

from __future__ import annotations

import time

from sparsec.bench import BLOCK_MS, MIN_BLOCK, compare_interleaved


def _sleeper(ms: float):  # noqa: ANN202
    return lambda: time.sleep(ms / 1e3)


def _calls_per_block(budget_s: float) -> int:
    calls = {"a": 0, "b": 0}

    def counted(name: str):  # noqa: ANN202
        def run() -> None:
            calls[name] += 1
            time.sleep(0.001)

        return run

    result = compare_interleaved("a", {"a": counted("a"), "b": counted("b")}, budget_s=budget_s, min_rounds=5,
                                 max_rounds=5, warmup=3, pause_s=0.0)
    assert result.rounds == 5
    return (max(calls.values()) - 3) // 5  # minus the warm-up calls


def test_default_budget_keeps_the_long_blocks() -> None:
    # 5 rounds x 2 contenders x 20 ms fit in 1 s: blocks of ~BLOCK_MS (1 ms calls -> <= 20 calls)
    assert _calls_per_block(1.0) >= BLOCK_MS / 2


def test_small_budget_shortens_the_blocks() -> None:
    # 0.05 s over 10 blocks: 5 ms blocks (but never under MIN_BLOCK calls)
    n = _calls_per_block(0.05)
    assert MIN_BLOCK <= n <= 6
