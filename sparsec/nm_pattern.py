"""N:M sparsity patterns: parsing, masks and checks, shared by passes, verifiers and kernels.

An N:M pattern keeps at most N nonzeros in every group of M consecutive elements along one
axis of a weight (the reduction axis, so that a kernel can skip the zeros of a dot product).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sparsec.errors import OptionError

MAX_M = 64


@dataclass(frozen=True)
class NMPattern:
    n: int
    m: int

    def __post_init__(self) -> None:
        validate_nm(self.n, self.m)

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def validate_nm(n: int, m: int) -> None:
    if m < 2 or m > MAX_M:
        raise OptionError(f"invalid N:M pattern '{n}:{m}': M must be between 2 and {MAX_M}")
    if n < 1:
        raise OptionError(f"invalid N:M pattern '{n}:{m}': N must be at least 1")
    if n >= m:
        raise OptionError(f"invalid N:M pattern '{n}:{m}': N must be smaller than M")


def parse_nm(text: str) -> NMPattern:
    """Parse '2:4' into NMPattern(2, 4); reject '5:4', '0:4', '2:3.5' with a clear message."""
    match = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", text)
    if not match:
        raise OptionError(f"invalid N:M pattern '{text}': expected two integers 'N:M' such as 2:4")
    return NMPattern(int(match.group(1)), int(match.group(2)))


def _grouped(w: np.ndarray, m: int, axis: int) -> np.ndarray:
    """View `w` as [..., groups, m] with the groups taken along `axis`."""
    moved = np.moveaxis(w, axis, -1)
    if moved.shape[-1] % m:
        raise ValueError(f"axis {axis} of size {moved.shape[-1]} is not a multiple of {m}")
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_mask(scores: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Boolean mask keeping the N highest-scoring elements of each M-group along `axis`.

    Ties are broken by position (stable), so the mask is deterministic.
    """
    validate_nm(n, m)
    g = _grouped(np.asarray(scores), m, axis)
    # argsort of -score is stable: among equal scores the earlier position wins.
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    moved_shape = np.moveaxis(np.empty(scores.shape, dtype=np.uint8), axis, -1).shape
    return np.moveaxis(keep.reshape(moved_shape), -1, axis)


def nm_violations(w: np.ndarray, n: int, m: int, axis: int) -> int:
    """Number of M-groups along `axis` holding more than N nonzeros."""
    g = _grouped(np.asarray(w), m, axis)
    return int(np.count_nonzero(np.count_nonzero(g, axis=-1) > n))
