"""`merge-experts`: grouping by outputs, neuron alignment before averaging, the --moe spelling."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.errors import OptionError
from sparsec.passes.moe.experts import Experts
from sparsec.passes.moe.merge_experts import expert_outputs, group_experts, merge_group
from sparsec.passes.moe.spec import moe_pass_text

from .moe_models import random_experts


def _with_copies(ex: Experts, copies: dict[int, int], seed: int = 5) -> Experts:
    """Expert `dst` becomes expert `src` with its hidden neurons shuffled (the same function)."""
    rng = np.random.default_rng(seed)
    w1, b1, w2 = ex.w1.copy(), ex.b1.copy(), ex.w2.copy()
    w_up = None if ex.w_up is None else ex.w_up.copy()
    for dst, src in copies.items():
        p = rng.permutation(ex.w1.shape[2])
        w1[dst], b1[dst], w2[dst] = ex.w1[src][:, p], ex.b1[src][p], ex.w2[src][p]
        if w_up is not None:
            w_up[dst] = ex.w_up[src][:, p]
    return Experts(w1=w1, b1=b1, w2=w2, b2=ex.b2, w_up=w_up)


@pytest.mark.parametrize("gated", [False, True])
def test_aligned_merge_of_a_shuffled_copy_is_the_expert_itself(gated: bool) -> None:
    ex, _, _ = random_experts(16, 3, 24, gated)
    ex = _with_copies(ex, {1: 0})
    w1, b1, w2, w_up = merge_group(ex, [0, 1], np.array([0.7, 0.3]), dominant=0, aligned=True)
    np.testing.assert_allclose(w1, ex.w1[0], atol=1e-6)
    np.testing.assert_allclose(b1, ex.b1[0], atol=1e-6)
    np.testing.assert_allclose(w2, ex.w2[0], atol=1e-6)
    if gated:
        np.testing.assert_allclose(w_up, ex.w_up[0], atol=1e-6)
    # Without alignment the average mixes unrelated neurons.
    unaligned = merge_group(ex, [0, 1], np.array([0.7, 0.3]), dominant=0, aligned=False)
    assert np.abs(unaligned[0] - ex.w1[0]).max() > 0.1


def test_experts_that_compute_alike_are_grouped() -> None:
    ex, _, _ = random_experts(16, 4, 24, False)
    ex = _with_copies(ex, {2: 0, 3: 1})
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    outs = expert_outputs(x, ex, "gelu")
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-9)
    assert group_experts(outs, 2) == [[0, 2], [1, 3]]
    assert group_experts(outs, 4) == [[0], [1], [2], [3]]
    assert sorted(i for g in group_experts(outs, 3) for i in g) == [0, 1, 2, 3]


def test_moe_spec_spells_merge_experts() -> None:
    assert moe_pass_text("merge-experts:0.5") == "merge-experts{keep=0.5}"
    assert moe_pass_text("merge-experts:0.5,top-k:1") == "merge-experts{keep=0.5},moe-top-k{k=1}"
    with pytest.raises(OptionError, match="not both"):
        moe_pass_text("prune-experts:0.5,merge-experts:0.5")
    with pytest.raises(OptionError, match="fraction of experts to keep"):
        moe_pass_text("merge-experts:2")
