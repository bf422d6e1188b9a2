from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.errors import OptionError
from sparsec.nm_pattern import nm_mask, nm_violations, parse_nm


def test_parse_good() -> None:
    p = parse_nm(" 2:4 ")
    assert (p.n, p.m, str(p), p.density) == (2, 4, "2:4", 0.5)


@pytest.mark.parametrize(
    ("text", "msg"), [("5:4", "smaller"), ("4:4", "smaller"), ("0:4", "at least 1"), ("2:3.5", "two integers"),
                      ("-1:4", "at least 1"), ("1:1000", "between 2"), ("2", "two integers")]
)
def test_parse_bad(text: str, msg: str) -> None:
    with pytest.raises(OptionError, match=msg):
        parse_nm(text)


def test_mask_keeps_largest_and_breaks_ties_by_position() -> None:
    scores = np.array([[1.0, 3.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    mask = nm_mask(scores, 2, 4, axis=1)
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([(1, 4), (2, 4), (1, 8), (4, 8), (3, 16)]),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(0, 1),
    st.integers(0, 2**31 - 1),
)
def test_mask_holds_the_pattern(nm, rows, groups, axis, seed) -> None:
    n, m = nm
    shape = [rows, rows]
    shape[axis] = groups * m
    w = np.random.default_rng(seed).standard_normal(shape)
    mask = nm_mask(np.abs(w), n, m, axis)
    pruned = np.where(mask, w, 0)
    assert nm_violations(pruned, n, m, axis) == 0
    assert mask.sum() == w.size * n // m
    # The kept weights are the largest of each group.
    g = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    k = np.moveaxis(mask, axis, -1).reshape(-1, m)
    assert np.all(g[k].reshape(-1, n).min(axis=1) >= np.where(~k, g, -1).max(axis=1) - 1e-12)
