"""Real-data bars (slow): digits CNN accuracy after 2:4, allocation vs uniform at 75%."""

from __future__ import annotations

import pytest

from sparsec.eval.quality import digits_task, evaluate_method

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201
    return digits_task()


def test_digits_2_4_sparsegpt_drops_at_most_one_point(digits) -> None:  # noqa: ANN001
    r = evaluate_method(digits, "sparsegpt", "2:4")
    assert r["accuracy_dense"] > 0.95
    assert r["accuracy_drop_points"] <= 1.0, r


def test_digits_magnitude_is_worse_than_sparsegpt(digits) -> None:  # noqa: ANN001
    mag = evaluate_method(digits, "magnitude", "2:4")
    sgpt = evaluate_method(digits, "sparsegpt", "2:4")
    assert sgpt["accuracy"] > mag["accuracy"]


def test_digits_allocation_beats_uniform_at_75(digits) -> None:  # noqa: ANN001
    uniform = evaluate_method(digits, "sparsegpt", "u:0.75")
    alloc = evaluate_method(digits, "alloc", "u:0.75")
    assert alloc["weight_zero_fraction"] >= 0.75 - 0.005
    # Accuracy on 450 images moves in steps of 0.22 points and the trained CNN differs
    # between CPUs (an AVX2 AMD EPYC tied at 0.9822): never worse in accuracy, strictly
    # better in held-out logit error.
    assert alloc["accuracy"] >= uniform["accuracy"], (alloc, uniform)
    assert alloc["logits_rel_error"] < uniform["logits_rel_error"], (alloc, uniform)
