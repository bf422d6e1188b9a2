"""Criteria on hand-checked small problems: masks, and reconstruction beating magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.calib.stats import LayerStats
from sparsec.nm_pattern import nm_violations
from sparsec.passes.sparsify.criteria import output_error, prune_2d
from sparsec.passes.sparsify.patterns import parse_pattern


def _problem(correlated, rows: int = 48, k: int = 64, n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, LayerStats]:  # noqa: ANN001
    x = correlated(n, k, seed)
    w = np.random.default_rng(seed + 7).standard_normal((rows, k)).astype(np.float32)
    return x, w, LayerStats(x.T @ x, n)


def _out_err(x: np.ndarray, w: np.ndarray, new: np.ndarray) -> float:
    return float(np.linalg.norm(x @ (w - new).T) / np.linalg.norm(x @ w.T))


def test_magnitude_keeps_largest_per_group() -> None:
    w = np.array([[0.1, -3.0, 2.0, 0.5, 1.0, -1.5, 0.2, 0.3]], dtype=np.float32)
    new = prune_2d(w, parse_pattern("2:4"), "magnitude", None)
    np.testing.assert_array_equal(new, [[0.0, -3.0, 2.0, 0.0, 1.0, -1.5, 0.0, 0.0]])


def test_wanda_weighs_by_input_norm() -> None:
    # Column 0 has a small weight but a huge input: Wanda keeps it, magnitude drops it.
    w = np.array([[0.1, 1.0, 0.9, 0.8]], dtype=np.float32)
    gram = np.diag([10000.0, 1.0, 1.0, 1.0]).astype(np.float32)
    new = prune_2d(w, parse_pattern("2:4"), "wanda", LayerStats(gram, 1))
    np.testing.assert_array_equal(new != 0, [[True, True, False, False]])
    assert prune_2d(w, parse_pattern("2:4"), "magnitude", None)[0, 0] == 0.0


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "u:0.6", "b4x4:0.5"])
def test_sparsegpt_reconstruction_beats_magnitude(pattern: str, correlated) -> None:  # noqa: ANN001
    x, w, stats = _problem(correlated)
    p = parse_pattern(pattern)
    mag = prune_2d(w, p, "magnitude", None)
    wanda = prune_2d(w, p, "wanda", stats)
    sgpt = prune_2d(w, p, "sparsegpt", stats)
    e_mag, e_wanda, e_sgpt = _out_err(x, w, mag), _out_err(x, w, wanda), _out_err(x, w, sgpt)
    assert e_sgpt < 0.8 * e_mag, (e_sgpt, e_mag)
    assert e_sgpt < e_wanda
    # The Gram-only estimate equals the error measured on the data.
    assert output_error(w, sgpt, stats) == pytest.approx(e_sgpt, rel=1e-3)
    # Same sparsity as the pattern asks.
    assert np.mean(sgpt == 0) >= 1 - p.density - 1 / sgpt.size
    if p.kind == "nm":
        assert nm_violations(sgpt, p.n, p.m, axis=1) == 0


def test_sparsegpt_block_mask_is_whole_blocks(correlated) -> None:  # noqa: ANN001
    _, w, stats = _problem(correlated)
    new = prune_2d(w, parse_pattern("b4x4:0.5"), "sparsegpt", stats)
    tiles = (new != 0).reshape(12, 4, 16, 4).any(axis=(1, 3))
    zero_tiles = ~tiles
    assert zero_tiles.mean() == pytest.approx(0.5, abs=1 / 64)
    # Inside a kept tile nothing was forced to zero by the mask.
    assert np.all((new != 0).reshape(12, 4, 16, 4).transpose(0, 2, 1, 3)[tiles].all(axis=(1, 2)))


def test_unstructured_wanda_is_per_row(correlated) -> None:  # noqa: ANN001
    _, w, stats = _problem(correlated)
    new = prune_2d(w, parse_pattern("u:0.5"), "wanda", stats)
    assert np.all((new == 0).sum(axis=1) == w.shape[1] // 2)
