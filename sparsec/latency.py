"""The compile's end-to-end latency check: dense ONNX Runtime vs the compiled model, fairly.

Fair means: the dense baseline is ORT as a user would run it, with its pool spinning (ORT's
default) and without (the compiled model's setting), and the faster of the two counts; all
three run interleaved in one process (`sparsec.bench.compare_interleaved`: pauses between
blocks so one session's spinning workers cannot steal the cores the next one needs, first
call of each block discarded, medians, a per-round paired noise estimate).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from sparsec.bench import PAIRED_PROTOCOL, compare_interleaved, paired_noise, seconds_from_env
from sparsec.runtime import plain_session_options

BUDGET_ENV = "SPARSEC_BENCH_BUDGET_S"
DEFAULT_BUDGET_S = 4.0
DENSE_SPIN, DENSE_NOSPIN, COMPILED = "dense (ORT default, spinning)", "dense (spinning off)", "compiled"


def budget_from_env() -> float:
    return seconds_from_env(BUDGET_ENV, DEFAULT_BUDGET_S, 3600.0)


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def measure_latency(
    dense_bytes: bytes,
    compiled: dict[str, tuple[dict[str, Any], Callable[[dict[str, np.ndarray]], Any]]],
    feeds: dict[str, np.ndarray],
    threads: int,
    *,
    budget_s: float | None = None,
    label: str = "dense vs compiled",
) -> dict[str, Any]:
    """The manifest's `latency` entry: the faster dense setting vs the faster compiled setting
    (`compiled`: name -> (settings, runner)), with the noise of that ratio and `faster`."""
    fns: dict[str, Callable[[], Any]] = {}
    for name, spin in ((DENSE_SPIN, True), (DENSE_NOSPIN, False)):
        opts = plain_session_options(threads, allow_spinning=spin)
        fns[name] = _runner(ort.InferenceSession(dense_bytes, opts, providers=["CPUExecutionProvider"]), feeds)
    for name, (_, run) in compiled.items():
        fns[f"{COMPILED} ({name})"] = (lambda r: lambda: r(feeds))(run)
    load_before = load_average()
    result = compare_interleaved(DENSE_SPIN, fns, budget_s=budget_s or budget_from_env(), min_rounds=7,
                                 max_rounds=100, label=label)
    t = result.timings
    best_dense = min((DENSE_SPIN, DENSE_NOSPIN), key=lambda n: t[n].median_ms)
    best_name = min(compiled, key=lambda n: t[f"{COMPILED} ({n})"].median_ms)
    best = f"{COMPILED} ({best_name})"
    speedup = t[best_dense].median_ms / t[best].median_ms
    noise = paired_noise(result, best_dense, best)
    return {
        "measured": True,
        "dense_ms": round(t[best_dense].median_ms, 4),
        "compiled_ms": round(t[best].median_ms, 4),
        "speedup": round(speedup, 4),
        "noise": round(noise, 4),
        "faster": speedup > 1.0 + noise,
        "baseline": best_dense,
        "dense_spinning_ms": round(t[DENSE_SPIN].median_ms, 4),
        "dense_no_spinning_ms": round(t[DENSE_NOSPIN].median_ms, 4),
        "compiled_by_setting_ms": {n: round(t[f"{COMPILED} ({n})"].median_ms, 4) for n in compiled},
        "dense": t[best_dense].to_dict(),
        "compiled": t[best].to_dict(),
        "rounds": result.rounds,
        "threads": threads,
        "compiled_settings": compiled[best_name][0],
        "protocol": "dense ORT CPU (spinning on and off) vs the compiled model (each runtime setting), the faster "
        "of each counts, same process and threads: " + PAIRED_PROTOCOL.format(warmup=3),
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "load_average": load_before,
    }


def _runner(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: session.run(None, feeds)
