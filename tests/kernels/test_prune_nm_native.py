"""`sk_nm_prune` (magnitude N:M in one C pass) against the numpy path it replaces in
`prune_2d`: |W| -> nm_mask -> masked, bit for bit, in both memory orders."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.kernels import _native
from sparsec.kernels.packing_nm import prune_nm_native
from sparsec.nm_pattern import nm_mask
from sparsec.passes.sparsify.criteria import masked, prune_2d
from sparsec.passes.sparsify.patterns import Pattern


def numpy_path(w2: np.ndarray, n: int, m: int) -> np.ndarray:
    return masked(w2, nm_mask(np.abs(w2), n, m, axis=1))


def awkward_weight(rows: int, k: int, seed: int) -> np.ndarray:
    """Random weights with the cases a ranking can get wrong: ties of equal magnitude and of
    opposite sign, whole groups of zeros, signed zeros."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    w[rng.random(w.shape) < 0.2] = 0.5
    w[rng.random(w.shape) < 0.1] = -0.5
    w[rng.random(w.shape) < 0.1] = 0.0
    w[rng.random(w.shape) < 0.05] = -0.0
    w[:, :8] = 0.0
    return w


@pytest.fixture(autouse=True)
def _library() -> None:
    if not hasattr(_native.load(), "sk_nm_prune"):
        pytest.fail("the kernel library has no sk_nm_prune: rebuild it (setup.py build_ext)")


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 4), (1, 8), (4, 8), (7, 8)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_native_equals_numpy_bit_for_bit(n: int, m: int, order: str) -> None:
    # 300 columns of the [K, N] layout: more than one 256-wide strip, the last one partial.
    w2 = np.asarray(awkward_weight(300, 6 * m, seed=n * 31 + m), order=order)
    got = prune_nm_native(w2, n, m)
    assert got is not None
    want = numpy_path(w2, n, m)
    assert got.flags.c_contiguous == (order == "C") and got.flags.f_contiguous == (order == "F")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # signs of zeros too
    assert (np.count_nonzero(got.reshape(300, -1, m), axis=2) <= n).all()


@pytest.mark.parametrize("order", ["C", "F"])
def test_weights_large_enough_for_threads(order: str) -> None:
    """Above 2^18 weights the groups are split between threads: the same bits, and a
    non-finite weight in the last thread's share is still found."""
    w2 = np.asarray(awkward_weight(640, 512, seed=9), order=order)
    got = prune_nm_native(w2, 2, 4)
    assert got is not None
    np.testing.assert_array_equal(got.view(np.uint32), numpy_path(w2, 2, 4).view(np.uint32))
    w2[-1, -1] = np.nan
    assert prune_nm_native(w2, 2, 4) is None


def test_matmul_weight_pruned_as_its_transpose() -> None:
    """A MatMul weight [K, N] is pruned as its [N, K] transpose (F-ordered): the result turned
    back is the C-ordered [K, N] weight with no copy."""
    w = awkward_weight(64, 40, seed=5)  # [K=64, N=40]
    got = prune_nm_native(w.T, 2, 4)
    assert got is not None and got.T.flags.c_contiguous
    np.testing.assert_array_equal(got, numpy_path(w.T, 2, 4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_left_to_numpy(bad: float) -> None:
    w2 = awkward_weight(8, 16, seed=1)
    w2[3, 5] = bad
    assert prune_nm_native(w2, 2, 4) is None
    assert prune_nm_native(np.asfortranarray(w2), 2, 4) is None
    out = prune_2d(w2, Pattern("nm", 2, 4), "magnitude", None)  # numpy's path takes over
    assert out.shape == w2.shape


def test_what_the_native_path_does_not_take() -> None:
    w2 = awkward_weight(8, 32, seed=2)
    assert prune_nm_native(w2.astype(np.float64), 2, 4) is None  # float32 only
    assert prune_nm_native(w2[:, ::2], 2, 4) is None  # neither C- nor F-ordered
    assert prune_nm_native(w2, 2, 16) is None  # m > 8
    assert prune_nm_native(w2[:, :30], 2, 4) is None  # K not a multiple of m


def test_prune_2d_magnitude_takes_the_native_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """prune_2d's magnitude N:M result is the native one, and equals the numpy path's."""
    import sparsec.kernels.packing_nm as packing

    calls = []
    real = packing.prune_nm_native
    monkeypatch.setattr(packing, "prune_nm_native", lambda *a: calls.append(a) or real(*a))
    w2 = awkward_weight(48, 64, seed=3)
    out = prune_2d(w2, Pattern("nm", 2, 4), "magnitude", None)
    assert len(calls) == 1
    np.testing.assert_array_equal(out.view(np.uint32), numpy_path(w2, 2, 4).view(np.uint32))
