"""N:M packer: lossless round trip, minimal metadata, and rejection of malformed data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.kernels import PackedFormatError, PackedNM, pack_nm, prune_nm
from sparsec.kernels.packing_nm import META_WORDS

PATTERNS = [(2, 4), (1, 4), (3, 4), (1, 8), (4, 8), (2, 16), (7, 16), (16, 16)]


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.sampled_from(PATTERNS),
    groups=st.integers(1, 9),
    cols=st.integers(1, 70),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip(pattern: tuple[int, int], groups: int, cols: int, seed: int) -> None:
    n, m = pattern
    w = prune_nm(np.random.default_rng(seed).standard_normal((groups * m, cols)), n, m)
    packed = pack_nm(w, n, m)
    np.testing.assert_array_equal(packed.to_dense(), w)
    # positions are strictly increasing inside each group (the canonical form)
    if n > 1:
        assert np.all(np.diff(packed.positions().astype(int), axis=2) > 0)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 8), (3, 16)])
def test_packing_in_tile_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch, n: int, m: int) -> None:
    """Large weights are packed a few tiles at a time (bounded temporaries): same bytes."""
    import sparsec.kernels.packing_nm as packing

    w = prune_nm(np.random.default_rng(3).standard_normal((4 * m, 16 * 7 + 5)), n, m)  # 8 tiles, the last partial
    whole = pack_nm(w, n, m)
    monkeypatch.setattr(packing, "_pack_native", lambda *a: False)  # the numpy packer chunks
    monkeypatch.setattr(packing, "_CHUNK_ELEMENTS", 4 * m * 16 * 3)  # 3 tiles per step: 3 + 3 + 2
    chunked = pack_nm(w.T.copy().T, n, m)  # a strided (transposed-view) weight, as lowered Gemm weights are
    np.testing.assert_array_equal(chunked.values, whole.values)
    np.testing.assert_array_equal(chunked.meta, whole.meta)
    assert not chunked.values.flags.writeable and chunked.values.ctypes.data % 64 == 0
    np.testing.assert_array_equal(chunked.to_dense(), w)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 8)])
def test_the_native_packer_splits_large_weights_between_threads(monkeypatch: pytest.MonkeyPatch, n: int, m: int) -> None:
    """Above 2^18 weights `sk_nm_pack` splits the tiles between threads: the numpy packer's bytes."""
    import sparsec.kernels.packing_nm as packing

    w = prune_nm(np.random.default_rng(m).standard_normal((64 * m, 16 * 300 + 7)), n, m)
    native = pack_nm(w, n, m)
    monkeypatch.setattr(packing, "_pack_native", lambda *a: False)
    reference = pack_nm(w, n, m)
    np.testing.assert_array_equal(native.values, reference.values)
    np.testing.assert_array_equal(native.meta, reference.meta)


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_the_native_packer_writes_the_numpy_packers_bytes(monkeypatch: pytest.MonkeyPatch, n: int, m: int) -> None:
    """`sk_nm_pack` (C, one pass) against the numpy packer: groups sparser than the pattern,
    signed zeros (copied as they are), NaN (a nonzero), a partial last tile, strided input;
    and both refuse a group denser than the pattern."""
    import sparsec.kernels.packing_nm as packing
    from sparsec.kernels import _native

    if not hasattr(_native.load(), "sk_nm_pack"):
        pytest.fail("the kernel library has no sk_nm_pack: rebuild it (setup.py build_ext)")
    rng = np.random.default_rng(n * 17 + m)
    for k, cols in ((m, 1), (3 * m, 16), (5 * m, 16 * 4 + 9), (2 * m, 37)):
        w = prune_nm(rng.standard_normal((k, cols)), n, m)
        w[rng.random(w.shape) < 0.2] = 0.0
        w[rng.random(w.shape) < 0.1] = -0.0
        w[(w != 0) & (rng.random(w.shape) < 0.05)] = np.nan
        for weight in (w, np.asfortranarray(w), w[:, ::-1]):
            native = pack_nm(weight, n, m)
            with monkeypatch.context() as patch:
                patch.setattr(packing, "_pack_native", lambda *a: False)
                numpy_packed = pack_nm(weight, n, m)
            assert native.values.tobytes() == numpy_packed.values.tobytes()
            assert native.meta.tobytes() == numpy_packed.meta.tobytes()
    dense = np.ones((2 * m, 20), np.float32)
    dense[:, :19] = prune_nm(dense[:, :19], n, m)  # only the last column's groups are too dense
    if n < m:
        with pytest.raises(PackedFormatError, match=f"not {n}:{m}"):
            pack_nm(dense, n, m)
        with monkeypatch.context() as patch, pytest.raises(PackedFormatError, match=f"not {n}:{m}"):
            patch.setattr(packing, "_pack_native", lambda *a: False)
            pack_nm(dense, n, m)


def test_prune_keeps_largest_magnitudes() -> None:
    w = np.array([[1.0], [-5.0], [3.0], [0.5]], dtype=np.float32)
    np.testing.assert_array_equal(prune_nm(w, 2, 4)[:, 0], [0.0, -5.0, 3.0, 0.0])


@pytest.mark.parametrize(("n", "m", "bits"), [(2, 4, 2), (1, 8, 3), (4, 16, 4)])
def test_metadata_is_log2_m_bits_per_value(n: int, m: int, bits: int) -> None:
    k, cols = 4 * m, 64
    packed = pack_nm(prune_nm(np.ones((k, cols), np.float32), n, m), n, m)
    kept = (k // m) * n * cols
    assert packed.values.size == kept
    assert packed.meta.nbytes * 8 == kept * bits


def test_pack_rejects_denser_than_pattern() -> None:
    with pytest.raises(PackedFormatError, match="not 2:4"):
        pack_nm(np.ones((8, 4), np.float32), 2, 4)


@pytest.mark.parametrize(
    ("n", "m", "k"), [(2, 5, 10), (0, 4, 8), (5, 4, 8), (2, 4, 6), (2, 4, 0)]
)
def test_pack_rejects_bad_shapes(n: int, m: int, k: int) -> None:
    with pytest.raises(PackedFormatError):
        pack_nm(np.zeros((k, 3), np.float32), n, m)


def _packed(n: int = 2, m: int = 4) -> PackedNM:
    w = prune_nm(np.random.default_rng(0).standard_normal((16, 20)), n, m)
    return pack_nm(w, n, m)


def test_from_arrays_accepts_valid_buffers() -> None:
    p = _packed()
    q = PackedNM.from_arrays(p.n, p.m, p.k, p.cols, p.values.copy(), p.meta.copy())
    np.testing.assert_array_equal(q.to_dense(), p.to_dense())
    assert not q.values.flags.writeable  # the kernel trusts validated, frozen buffers


@pytest.mark.parametrize("which", ["values_short", "values_long", "meta_short", "meta_long"])
def test_from_arrays_rejects_wrong_lengths(which: str) -> None:
    p = _packed()
    values, meta = p.values, p.meta
    if which == "values_short":
        values = values[:-1]
    elif which == "values_long":
        values = np.concatenate([values, [0.0]]).astype(np.float32)
    elif which == "meta_short":
        meta = meta[:-1]
    else:
        meta = np.concatenate([meta, [0]]).astype(np.uint16)
    with pytest.raises(PackedFormatError, match="elements"):
        PackedNM.from_arrays(p.n, p.m, p.k, p.cols, values, meta)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (2, 8), (3, 16)])
def test_from_arrays_rejects_corrupted_positions(n: int, m: int) -> None:
    p = _packed(n, m)
    meta = p.meta.copy()
    words = META_WORDS[m]
    meta[words : 2 * words] = 0  # slot 1 of the first group now sits at position 0 <= slot 0
    with pytest.raises(PackedFormatError, match="increasing"):
        PackedNM.from_arrays(p.n, p.m, p.k, p.cols, p.values, meta)


def test_from_arrays_rejects_wrong_dtypes() -> None:
    p = _packed()
    with pytest.raises(PackedFormatError, match="float32"):
        PackedNM.from_arrays(p.n, p.m, p.k, p.cols, p.values.astype(np.float64), p.meta)
    with pytest.raises(PackedFormatError, match="uint16"):
        PackedNM.from_arrays(p.n, p.m, p.k, p.cols, p.values, p.meta.astype(np.int32))
