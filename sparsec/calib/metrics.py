"""Output metrics: how close a candidate model's outputs are to a reference's. One name each.

Every metric compares lists of output arrays (one per graph output, samples on axis 0) row
by row, a row being a vector along the last axis (a sample's logits, a token's embedding),
and reports the worst graph output. `rows` (optional, per output) restricts the comparison
to real rows, e.g. the non-padding tokens of a batch of sentences.

- `mean_cosine`: mean over rows of the cosine similarity;
- `worst_cosine`: smallest cosine similarity of any row;
- `kl`: mean over rows of KL(softmax(reference) || softmax(candidate)) (outputs are logits);
- `max_abs`: largest absolute difference; `rel_l2`: ||reference - candidate|| / ||reference||.
Damages (`DAMAGES`, what sensitivity scans and allocators minimise) are 0 for identical
outputs and grow with the error: `cosine` = 1 - mean_cosine, `kl` = kl. For small,
independent perturbations they add up over layers, which is what allocation relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Outputs = Sequence[np.ndarray]
Rows = Sequence[np.ndarray | None] | None  # per output: a boolean mask over its leading dims


def _pairs(reference: Outputs, candidate: Outputs, rows: Rows = None):  # noqa: ANN202
    for i, (a, b) in enumerate(zip(reference, candidate, strict=True)):
        a64 = np.asarray(a, dtype=np.float64)
        b64 = np.asarray(b, dtype=np.float64).reshape(a64.shape)
        if a64.size == 0:  # an empty output agrees with itself
            continue
        mask = rows[i] if rows is not None and i < len(rows) else None
        if mask is not None and a64.ndim == mask.ndim + 1 and a64.shape[:-1] == mask.shape:
            a2, b2 = a64[mask], b64[mask]
        else:
            width = a64.shape[-1] if a64.ndim else 1
            a2, b2 = a64.reshape(-1, width), b64.reshape(-1, width)
        yield a2, b2


def row_cosines(a2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Cosine similarity per row of two [rows, width] arrays (1 where both rows are zero)."""
    num = np.sum(a2 * b2, axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    both_zero = (np.linalg.norm(a2, axis=1) == 0) & (np.linalg.norm(b2, axis=1) == 0)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    return np.where(both_zero, 1.0, cos)


def mean_cosine(reference: Outputs, candidate: Outputs, rows: Rows = None) -> float:
    return min((float(row_cosines(a, b).mean()) if len(a) else 1.0 for a, b in _pairs(reference, candidate, rows)), default=1.0)


def worst_cosine(reference: Outputs, candidate: Outputs, rows: Rows = None) -> float:
    return min((float(row_cosines(a, b).min()) if len(a) else 1.0 for a, b in _pairs(reference, candidate, rows)), default=1.0)


def kl(reference: Outputs, candidate: Outputs, rows: Rows = None) -> float:
    worst = 0.0
    for a, b in _pairs(reference, candidate, rows):
        la = a - a.max(axis=1, keepdims=True)
        la -= np.log(np.exp(la).sum(axis=1, keepdims=True))
        lb = b - b.max(axis=1, keepdims=True)
        lb -= np.log(np.exp(lb).sum(axis=1, keepdims=True))
        worst = max(worst, float((np.exp(la) * (la - lb)).sum(axis=1).mean()) if len(a) else 0.0)
    return worst


def max_abs(reference: Outputs, candidate: Outputs, rows: Rows = None) -> float:
    return max((float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in _pairs(reference, candidate, rows)), default=0.0)


def rel_l2(reference: Outputs, candidate: Outputs, rows: Rows = None) -> float:
    worst = 0.0
    for a, b in _pairs(reference, candidate, rows):
        norm = float(np.linalg.norm(a))
        worst = max(worst, float(np.linalg.norm(a - b)) / norm if norm > 0 else 0.0)
    return worst


def cosine_damage(reference: Outputs, candidate: Outputs, rows: Rows = None) -> float:
    """1 - mean_cosine."""
    return 1.0 - mean_cosine(reference, candidate, rows)


Damage = Callable[..., float]
DAMAGES: dict[str, Damage] = {"cosine": cosine_damage, "kl": kl}


@dataclass(frozen=True)
class Fidelity:
    """How close one model's outputs are to another's on the same inputs."""

    mean_cosine: float
    worst_cosine: float
    max_abs: float
    rel_l2: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def worst_of(self, other: Fidelity) -> Fidelity:
        return Fidelity(
            min(self.mean_cosine, other.mean_cosine), min(self.worst_cosine, other.worst_cosine),
            max(self.max_abs, other.max_abs), max(self.rel_l2, other.rel_l2),
        )


def compare(reference: Outputs, candidate: Outputs, rows: Rows = None) -> Fidelity:
    return Fidelity(
        mean_cosine(reference, candidate, rows), worst_cosine(reference, candidate, rows),
        max_abs(reference, candidate, rows), rel_l2(reference, candidate, rows),
    )


__all__ = ["DAMAGES", "Fidelity", "compare", "cosine_damage", "kl", "max_abs", "mean_cosine", "rel_l2", "row_cosines", "worst_cosine"]
