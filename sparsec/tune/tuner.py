"""Measure, on this machine, whether a layer shape runs faster through a kernel variant than
dense ONNX Runtime, and remember the answer (`TuneCache`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from sparsec.bench import (
    PAIRED_PROTOCOL,
    Comparison,
    compare_interleaved,
    paired_noise,
    seconds_from_env,
)
from sparsec.tune.cache import TuneCache
from sparsec.tune.variants import DENSE, LayerShape, Variant, variants_for

log = logging.getLogger("sparsec.tune")

BUDGET_ENV = "SPARSEC_TUNE_BUDGET_S"
DEFAULT_BUDGET_S = 1.0  # per shape: enough rounds for a noise estimate, bounded compile time
# Recorded with each measurement; a change re-tunes. The kernels' parallel regions run on ORT's
# intra-op pool inside sessions (kernels/src/sk_ort_pool.c): timings from before that differ.
PROTOCOL = (PAIRED_PROTOCOL.format(warmup=3) + "; kernel regions on ONNX Runtime's intra-op pool, spinning on"
            "; a restricted variant (one thread) over its general form only when both beat dense and it beats"
            " the general beyond noise; every block waits for the previous contender's pools to go idle")


@dataclass(frozen=True)
class Choice:
    """The tuner's answer for one shape: which variant, with the times behind it (per layer call)."""

    key: str
    variant: str  # DENSE or the winning kernel variant
    dense_us: float | None
    sparse_us: float | None  # the best kernel variant's time, if any ran
    sparse_variant: str | None
    noise: float | None  # relative 95% half-width of the speedup
    reason: str
    cached: bool = False
    variants_us: dict[str, float] | None = None  # every variant timed, per layer call

    @property
    def sparse(self) -> bool:
        return self.variant != DENSE

    @property
    def gain_us(self) -> float:
        if self.dense_us is None or self.sparse_us is None:
            return 0.0
        return self.dense_us - self.sparse_us

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "dense_us": self.dense_us, "sparse_us": self.sparse_us,
                "sparse_variant": self.sparse_variant, "noise": self.noise, "reason": self.reason,
                **({"variants_us": self.variants_us} if self.variants_us else {})}

    @classmethod
    def from_dict(cls, key: str, d: dict[str, Any], cached: bool) -> Choice:
        return cls(key, d["variant"], d.get("dense_us"), d.get("sparse_us"), d.get("sparse_variant"),
                   d.get("noise"), d.get("reason", ""), cached, d.get("variants_us"))


def budget_from_env() -> float:
    return seconds_from_env(BUDGET_ENV, DEFAULT_BUDGET_S, 600.0)


def tuning_session_options(threads: int) -> ort.SessionOptions:
    """Sessions as models run: ORT's pool spinning (its default; the kernels run on that pool,
    so it no longer steals their cores), for dense and kernels alike. With spinning off the
    dense baseline paid a wake-up per call and the kernels looked faster than they were in a
    model (3072x768 batch 1: dense 206 us spinning off, 174 us on)."""
    from sparsec.kernels import kernels_available

    if kernels_available():
        from sparsec.backends.ort.sparse_ops import session_options

        return session_options(threads, allow_spinning=True)
    from sparsec.runtime import plain_session_options

    return plain_session_options(threads, allow_spinning=True)


class Tuner:
    def __init__(self, threads: int = 2, cache: TuneCache | None = None, budget_s: float | None = None) -> None:
        self.threads = threads
        self.cache = cache if cache is not None else TuneCache()
        self.budget_s = budget_from_env() if budget_s is None else budget_s
        self.measured = 0  # shapes measured (not from the cache) by this tuner

    def choose(self, shape: LayerShape) -> Choice:
        registered = sorted(variants_for(shape.op))
        entry = self.cache.get(shape.key)
        # A new variant, or a changed timing protocol, means a new measurement.
        if (entry is not None and entry.get("variants") == registered and entry.get("protocol") == PROTOCOL
                and not _busy_and_inconclusive(entry)):
            return Choice.from_dict(shape.key, entry, cached=True)
        choice = self._measure(shape)
        if choice.dense_us is not None:  # nothing measured, nothing to remember
            from sparsec.latency import load_average

            # The load it was measured under: a result from a busy machine is worth re-measuring
            # (`sparsec tune --retune`) once it is quiet.
            self.cache.put(shape.key, {**choice.to_dict(), "variants": registered, "load_average": load_average(),
                                       "protocol": PROTOCOL, "budget_s": self.budget_s})
            self.measured += 1
        return choice

    def _measure(self, shape: LayerShape) -> Choice:
        table = variants_for(shape.op)
        if DENSE not in table:
            return Choice(shape.key, DENSE, None, None, None, None, f"no variants registered for {shape.op}")
        skipped = {name: v.skip(shape) for name, v in table.items() if name != DENSE}
        runnable = [name for name, why in skipped.items() if why is None]
        if not runnable:
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or f"no kernel variant for {shape.op}"
            return Choice(shape.key, DENSE, None, None, None, None, why)
        opts = tuning_session_options(shape.threads)
        fns = {}
        for name in [DENSE, *runnable]:
            model, feeds = table[name].build(shape, np.random.default_rng(0))
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            del model  # the session holds the weights; the proto's copy goes before the next one is built
            fns[name] = (lambda s, f: lambda: s.run(None, f))(session, feeds)
        # Always wait out the last contender's spinning pool before a block: with three
        # variants the 1 s budget had no room for the wait by compare_interleaved's rule, and
        # the previous session's spinning worker took a core from the next block (BERT-base
        # shapes at 128 rows: per-round dense/kernel ratios of 0.25-2.6, noise +-17-56%, vs
        # 0.72-1.10 and +-2-5% with the wait; dense alone varied 1.47-3.32 ms).
        result = compare_interleaved(DENSE, fns, budget_s=self.budget_s, min_rounds=5, max_rounds=200,
                                     label=f"tune {shape.key}", idle_wait=True)
        if not _conclusive(result, runnable):  # one longer look before calling it a tie
            result = compare_interleaved(DENSE, fns, budget_s=2 * self.budget_s, min_rounds=5, max_rounds=400,
                                         label=f"tune {shape.key} (again)", idle_wait=True)
        per_call = {name: result.timings[name].median_ms * 1e3 / shape.copies for name in fns}
        best = _best_variant(result, table, runnable)
        dense_us, sparse_us = round(per_call[DENSE], 3), round(per_call[best], 3)
        noise = round(result.noise[best], 4)
        if result.faster(best):
            variant, reason = best, f"{best} {dense_us / sparse_us:.2f}x faster than dense (noise +-{noise:.1%})"
        else:
            variant, reason = DENSE, f"{best} not faster than dense beyond noise ({dense_us / sparse_us:.2f}x, noise +-{noise:.1%})"
        log.info("tuned %s: dense %.1f us, %s %.1f us -> %s", shape.key, dense_us, best, sparse_us, variant)
        return Choice(shape.key, variant, dense_us, sparse_us, best, noise, reason,
                      variants_us={name: round(us, 3) for name, us in per_call.items()})


# An entry measured this much busier (1-minute load average) than now, whose answer was "dense"
# only because the noise swamped a gain, is measured again: a loaded machine's tie cost the
# GPT-2 step its LM head (1.51x +-72% under load 4.7, cached, reused when quiet).
STALE_LOAD_DROP = 1.0
STALE_NOISE = 0.2


def _busy_and_inconclusive(entry: dict) -> bool:
    from sparsec.latency import load_average

    then, now = entry.get("load_average"), load_average()
    if not then or not now or then[0] - now[0] < STALE_LOAD_DROP:
        return False
    dense_us, sparse_us, noise = entry.get("dense_us"), entry.get("sparse_us"), entry.get("noise")
    return (entry.get("variant") == DENSE and noise is not None and noise > STALE_NOISE
            and dense_us is not None and sparse_us is not None and sparse_us < dense_us)


def _best_variant(result: Comparison, table: dict[str, Variant], runnable: list[str]) -> str:
    """The fastest kernel variant, or the general form of a restricted one where both beat
    dense beyond noise and the restricted one does not beat the general beyond noise."""
    winners = [name for name in runnable if result.faster(name)]
    # Fastest by median time, the figure the manifest shows per variant (`variants_us`): the
    # median of paired speedups could rank two close variants the other way.
    return _preferred(min(runnable, key=lambda name: result.timings[name].median_ms), result, table, winners)


def _preferred(best: str, result: Comparison, table: dict[str, Variant], winners: list[str]) -> str:
    """`best`, unless it restricts a variant among `winners` (those faster than dense beyond
    noise) that it does not beat beyond the noise of their paired rounds."""
    general = table[best].restricts
    while general is not None and general in winners:
        ratio = result.timings[general].median_ms / result.timings[best].median_ms
        if ratio > 1.0 + paired_noise(result, general, best):
            break
        best, general = general, table[general].restricts
    return best


def _conclusive(result, names: list[str]) -> bool:
    return any(abs(result.speedups[n] - 1.0) > result.noise[n] for n in names)
