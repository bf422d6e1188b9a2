"""The last pass check and the compiled model's fidelity run as one run.

Without it, a compile runs its final model twice: the pass manager checks the model after
the last lowering pass on its sample input, then the fidelity check runs the same model on
`fidelity_samples` further inputs; each run builds its sessions and hands ORT every weight
again (BERT-base, stage by stage: 4 sessions, 0.4-0.5 s of the compile beside the runs).
`SharedCompiledRun` stands in for `numerics.evaluate` in the checks of the backend's lowering
passes and runs the fidelity inputs with the sample input there. When no later pass changed
the model, the fidelity check takes those outputs instead of running the model again. A check
whose model changes afterwards has run the fidelity inputs for nothing (a few `session.run`s):
which pass is the last to change the model is only known once the pipeline has run.

The outputs are the final model's: only `com.sparsec`-free models are shared (the checks run
the reference lowering of the dialect, the fidelity run runs the model as it is), and every
input is its own `session.run`, as in the fidelity run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from sparsec.calib.dense_share import same_feeds
from sparsec.dialect import DOMAIN
from sparsec.numerics import NUMERICS_THREADS, evaluate_batches

Feeds = dict[str, np.ndarray]


class SharedCompiledRun:
    """`__call__(model, feeds, index)`: the pass manager's check of `model` after pass `index`.
    From pass `first_index` on (the backend's lowering), the check also runs `fidelity_feeds`;
    `fidelity(changed, batches)` then returns their outputs if no later pass changed the model."""

    def __init__(self, fidelity_feeds: Sequence[Feeds], first_index: int, threads: int = NUMERICS_THREADS) -> None:
        self.fidelity_feeds = [dict(f) for f in fidelity_feeds]
        self.first_index = first_index
        self.threads = threads
        self._index: int | None = None
        self._parts: list[list[np.ndarray]] | None = None

    def __call__(self, model: ir.Model, feeds: Feeds, index: int) -> list[np.ndarray]:
        self._index, self._parts = None, None  # the model changed: earlier outputs are stale
        if index < self.first_index or _has_dialect_nodes(model):
            return evaluate_batches(model, [feeds], self.threads)[0]
        first, *rest = evaluate_batches(model, [feeds, *self.fidelity_feeds], self.threads)
        self._index, self._parts = index, rest
        return first

    def fidelity(self, changed: Sequence[bool], batches: Sequence[Feeds]) -> list[np.ndarray] | None:
        """The outputs over `batches` (concatenated on axis 0, as `run_staged`) kept from the
        last check, or None: no check ran them, a later pass (`changed[i]` for pass i) changed
        the model, or `batches` are not the fidelity inputs. Used once."""
        index, parts = self._index, self._parts
        self._index, self._parts = None, None
        if index is None or not parts or any(changed[index + 1 :]) or not same_feeds(batches, self.fidelity_feeds):
            return None
        return [np.concatenate([np.asarray(outs[i]) for outs in parts], axis=0) for i in range(len(parts[0]))]


def _has_dialect_nodes(model: ir.Model) -> bool:
    if any(node.domain == DOMAIN for node in ir.traversal.RecursiveGraphIterator(model.graph)):
        return True
    return any(node.domain == DOMAIN for f in model.functions.values() for node in f)


__all__ = ["SharedCompiledRun"]
