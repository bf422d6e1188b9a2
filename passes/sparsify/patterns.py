"""Sparsity patterns a layer can take, and how each picks its mask from scores.

Masks are chosen on the layer's 2-D view `W2 [rows, K]` (see `sparsec.layer_view`): rows are
outputs, columns the reduction axis, so N:M groups are M consecutive columns and blocks are
`bo x bk` tiles. Spelling (pipeline text and `--sparsity` candidates):
`dense`, `2:4` (N:M), `u:0.75` (unstructured, 75% zeros), `b16x4:0.75` (16x4 blocks, 75% zeros).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sparsec.errors import OptionError
from sparsec.nm_pattern import nm_mask, validate_nm


@dataclass(frozen=True)
class Pattern:
    kind: str  # "dense" | "nm" | "unstructured" | "block"
    n: int = 0
    m: int = 0
    sparsity: float = 0.0  # fraction of zeros (unstructured, block)
    block: tuple[int, int] = (1, 1)  # (rows, cols) of a block

    @property
    def density(self) -> float:
        if self.kind == "dense":
            return 1.0
        if self.kind == "nm":
            return self.n / self.m
        return 1.0 - self.sparsity

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"

    @property
    def col_multiple(self) -> int:
        """Columns of W2 must be a multiple of this."""
        return self.m if self.kind == "nm" else self.block[1] if self.kind == "block" else 1

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "unstructured":
            return f"u:{self.sparsity:g}"
        if self.kind == "block":
            return f"b{self.block[0]}x{self.block[1]}:{self.sparsity:g}"
        return "dense"

    def keep_mask(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask [rows, cols] keeping the highest-scoring weights under this pattern."""
        if self.kind == "dense":
            return np.ones(scores.shape, dtype=bool)
        if self.kind == "nm":
            return nm_mask(scores, self.n, self.m, axis=1)
        if self.kind == "unstructured":
            return _keep_top(scores.ravel(), self.density).reshape(scores.shape)
        bo, bk = self.block
        rows, cols = scores.shape
        tiles = scores.reshape(rows // bo, bo, cols // bk, bk).sum(axis=(1, 3))
        keep = _keep_top(tiles.ravel(), self.density).reshape(tiles.shape)
        return np.repeat(np.repeat(keep, bo, axis=0), bk, axis=1)

    def skip_reason(self, rows: int, cols: int) -> str | None:
        if self.kind == "nm" and cols % self.m:
            return f"reduction axis has {cols} elements, not a multiple of m={self.m}"
        if self.kind == "block" and (rows % self.block[0] or cols % self.block[1]):
            return f"weight view {rows}x{cols} is not a multiple of the block {self.block[0]}x{self.block[1]}"
        return None


DENSE = Pattern("dense")


def _keep_top(scores: np.ndarray, density: float) -> np.ndarray:
    keep_count = int(round(density * scores.size))
    keep = np.zeros(scores.size, dtype=bool)
    if keep_count > 0:
        # Stable sort on -score: among ties the earlier position is kept (deterministic).
        keep[np.argsort(-scores, kind="stable")[:keep_count]] = True
    return keep


def parse_pattern(text: str) -> Pattern:
    """'dense', '2:4', 'u:0.75', 'b16x4:0.75' -> Pattern; OptionError with the grammar otherwise."""
    t = text.strip().lower()
    if t in ("dense", "none"):
        return DENSE
    if m := re.fullmatch(r"(\d+):(\d+)", t):
        n, mm = int(m.group(1)), int(m.group(2))
        validate_nm(n, mm)
        return Pattern("nm", n=n, m=mm)
    if m := re.fullmatch(r"u:([0-9.]+)", t):
        return Pattern("unstructured", sparsity=_fraction(m.group(1), text))
    if m := re.fullmatch(r"b(\d+)x(\d+):([0-9.]+)", t):
        bo, bk = int(m.group(1)), int(m.group(2))
        if bo < 1 or bk < 1:
            raise OptionError(f"invalid sparsity pattern '{text}': block sides must be positive")
        return Pattern("block", sparsity=_fraction(m.group(3), text), block=(bo, bk))
    raise OptionError(
        f"invalid sparsity pattern '{text}': expected dense, N:M (2:4), u:FRACTION (u:0.75) or bRxC:FRACTION (b16x4:0.75)"
    )


def _fraction(value: str, text: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise OptionError(f"invalid sparsity pattern '{text}': {value!r} is not a number") from None
    if not 0.0 < f < 1.0:
        raise OptionError(f"invalid sparsity pattern '{text}': the zero fraction must be between 0 and 1")
    return f
