"""One stage-by-stage run of the dense input model for both checks that need it.

A lean compile (`sparsec.memory.lean_stage_bytes`) runs the dense model stage by stage twice:
the pass manager's reference outputs (its sample input) and the fidelity check's reference
(`fidelity_samples` further inputs). Each run builds a session per stage and reads every
weight again (BERT-base: 4 sessions, 434 MB read). `SharedDenseRun` does both in one run:
the pass manager calls it in place of `numerics.evaluate` on the input model, and it keeps
the fidelity samples' outputs for the fidelity check. Every batch is its own `session.run`
on the same stages as either run alone, so the outputs are the same arrays, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from sparsec.calib.staged import StagedModel, run_staged

Feeds = dict[str, np.ndarray]


class SharedDenseRun:
    """`__call__(feeds)`: the dense model's outputs on `feeds` (the pass manager's reference),
    computed together with the outputs on `fidelity_feeds`, which `fidelity` then returns."""

    def __init__(self, model: ir.Model, stage_bytes: int, threads: int, fidelity_feeds: Sequence[Feeds]) -> None:
        self.model = model
        self.stage_bytes = stage_bytes
        self.threads = threads
        self.fidelity_feeds = [dict(f) for f in fidelity_feeds]
        self._fidelity_parts: list[list[np.ndarray]] | None = None

    def __call__(self, feeds: Feeds) -> list[np.ndarray]:
        runs = StagedModel(self.model, self.stage_bytes, self.threads).run([feeds, *self.fidelity_feeds])
        first = next(runs)
        self._fidelity_parts = [list(outs) for outs in runs]
        return first

    def fidelity(self, batches: Sequence[Feeds]) -> list[np.ndarray]:
        """The dense outputs over `batches` concatenated on axis 0 (as `run_staged`): kept from
        the shared run when these are its fidelity samples, else computed now."""
        parts, self._fidelity_parts = self._fidelity_parts, None  # used once: no copy outlives the check
        if not parts or not same_feeds(batches, self.fidelity_feeds):
            return run_staged(self.model, list(batches), self.stage_bytes, self.threads)
        return [np.concatenate([np.asarray(outs[i]) for outs in parts], axis=0) for i in range(len(parts[0]))]


def same_feeds(a: Sequence[Feeds], b: Sequence[Feeds]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            u, v = np.asarray(x[k]), np.asarray(y[k])
            if u.dtype != v.dtype or u.shape != v.shape or u.tobytes() != v.tobytes():
                return False
    return True


Evaluator = Callable[[Feeds], list[np.ndarray]]

__all__ = ["Evaluator", "SharedDenseRun", "same_feeds"]
