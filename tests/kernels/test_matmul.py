"""Every kernel and ISA path equals a float64 dense product on the same masked weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec import kernels as sk

from .conftest import assert_matches

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")

NM_PATTERNS = [(2, 4), (1, 4), (3, 4), (1, 8), (2, 8), (4, 8), (3, 8), (1, 16), (2, 16), (5, 16)]


@settings(max_examples=25, deadline=None)
@given(
    pattern=st.sampled_from(NM_PATTERNS),
    batch=st.integers(1, 257),
    groups=st.integers(1, 12),
    cols=st.integers(1, 90),
    seed=st.integers(0, 2**31 - 1),
)
def test_nm_matches_dense(isa: str, pattern: tuple[int, int], batch: int, groups: int,
                          cols: int, seed: int) -> None:
    n, m = pattern
    rng = np.random.default_rng(seed)
    w = sk.prune_nm(rng.standard_normal((groups * m, cols)), n, m)
    x = rng.standard_normal((batch, groups * m)).astype(np.float32)
    assert_matches(sk.nm_matmul(x, sk.pack_nm(w, n, m), isa=isa), x, w)


@settings(max_examples=25, deadline=None)
@given(
    bk=st.sampled_from([1, 2, 4, 8]),
    batch=st.integers(1, 257),
    kblocks=st.integers(1, 24),
    cols=st.integers(1, 90),
    density=st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_matches_dense(isa: str, bk: int, batch: int, kblocks: int, cols: int,
                             density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = sk.prune_block(rng.standard_normal((kblocks * bk, cols)), density, bk)
    x = rng.standard_normal((batch, kblocks * bk)).astype(np.float32)
    assert_matches(sk.block_matmul(x, sk.pack_block(w, bk), isa=isa), x, w)


@pytest.mark.parametrize("layout", ["transposed", "row_slice", "col_slice", "float64", "3d"])
def test_non_contiguous_inputs(isa: str, layout: str, rng: np.random.Generator) -> None:
    k, cols = 64, 33
    w = sk.prune_nm(rng.standard_normal((k, cols)), 2, 4)
    packed = sk.pack_nm(w, 2, 4)
    blocks = sk.pack_block(sk.prune_block(w, 0.3, 2), 2)
    base = rng.standard_normal((40, 2 * k)).astype(np.float32)
    x = {
        "transposed": np.asfortranarray(base[:21, :k]),
        "row_slice": base[::3, :k],  # row stride 3 * 2k, unit stride along K
        "col_slice": base[:9, ::2],  # stride 2 along K: must be copied, not misread
        "float64": base[:7, :k].astype(np.float64),
        "3d": base[:24, :k].reshape(2, 12, k),
    }[layout]
    y = sk.nm_matmul(x, packed, isa=isa)
    assert y.shape == (*x.shape[:-1], cols)
    assert_matches(y.reshape(-1, cols), x.reshape(-1, k), w)
    assert_matches(sk.block_matmul(x, blocks, isa=isa).reshape(-1, cols), x.reshape(-1, k),
                   blocks.to_dense())


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_thread_counts_agree(isa: str, threads: int, rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((128, 200)), 1, 8)
    x = rng.standard_normal((37, 128)).astype(np.float32)
    assert_matches(sk.nm_matmul(x, sk.pack_nm(w, 1, 8), threads=threads, isa=isa), x, w)


def test_empty_batch(isa: str) -> None:
    packed = sk.pack_nm(np.zeros((8, 5), np.float32), 2, 4)
    assert sk.nm_matmul(np.zeros((0, 8), np.float32), packed, isa=isa).shape == (0, 5)


def test_env_var_forces_isa(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    from sparsec.kernels import isa as isa_mod

    for name in sk.available_isas():
        monkeypatch.setenv(sk.ENV_ISA, name)
        assert isa_mod.resolve_isa() == isa_mod.ISA_CODES[name]
    monkeypatch.setenv(sk.ENV_ISA, "bogus")
    with pytest.raises(ValueError, match="unknown kernel ISA"):
        isa_mod.resolve_isa()
    missing = [n for n in ("avx512", "avx2", "neon") if n not in sk.available_isas()]
    if missing:
        monkeypatch.setenv(sk.ENV_ISA, missing[0])
        with pytest.raises(sk.KernelUnavailableError):
            sk.nm_matmul(np.ones((1, 8), np.float32), sk.pack_nm(np.zeros((8, 4)), 1, 4))


def test_wrong_input_width_is_rejected() -> None:
    packed = sk.pack_nm(np.zeros((8, 4), np.float32), 2, 4)
    with pytest.raises(ValueError, match="expected"):
        sk.nm_matmul(np.ones((2, 12), np.float32), packed)


# The AVX-512 row-vectorised batch path (N >= 2; 1:M from 64 rows) starts at 24 rows (nm_avx512.c,
# NM_RV_MIN_ROWS), transposes blocks of 32 rows (2 vectors, the last one 1 or 2) and
# handles half tiles of 8 columns: cover both sides of each of those edges.
@pytest.mark.parametrize("rows", [1, 8, 16, 23, 24, 25, 31, 32, 33, 47, 48, 63, 64, 65, 129])
@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (3, 8), (2, 16), (1, 8)])
def test_nm_row_path_edges(isa: str, rows: int, pattern: tuple[int, int],
                           rng: np.random.Generator) -> None:
    n, m = pattern
    for k, cols in ((m * 7, 9), (m * 12, 40), (m * 3, 16)):
        w = sk.prune_nm(rng.standard_normal((k, cols)), n, m)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert_matches(sk.nm_matmul(x, sk.pack_nm(w, n, m), isa=isa, threads=2), x, w)


@pytest.mark.parametrize("min_rows", ["1", "1000000"])
def test_nm_both_batch_paths(isa: str, min_rows: str, monkeypatch: pytest.MonkeyPatch,
                             rng: np.random.Generator) -> None:
    """$SPARSEC_NM_ROWVEC_MIN_ROWS forces the row-vectorised (1) or the columns-as-lanes
    (huge) batch path; both match the reference, on strided inputs too."""
    monkeypatch.setenv("SPARSEC_NM_ROWVEC_MIN_ROWS", min_rows)
    for rows, (n, m), k, cols in ((1, (2, 4), 64, 33), (5, (4, 8), 96, 17),
                                  (40, (2, 4), 200, 70), (70, (2, 8), 64, 31)):
        w = sk.prune_nm(rng.standard_normal((k, cols)), n, m)
        base = rng.standard_normal((rows, 2 * k + 3)).astype(np.float32)
        x = base[:, 3:3 + 2 * k:2]
        assert_matches(sk.nm_matmul(x, sk.pack_nm(w, n, m), isa=isa), x, w)


# The AVX2 row path runs K in chunks of 256 and tiles in groups of 16 (nm_avx2.c, NM2_RV_KC,
# NM2_RV_TG), the AVX-512 one in chunks of 128 once its transposed x exceeds 64 KB (nm_avx512.c:
# at k = 512 it does not, past it it does), partial sums carried from chunk to chunk: K over one
# chunk (not a multiple of it, and one group past it), columns over one tile group (and a
# partial last tile), N = 1 too (1:4, 1:8 and 1:16: a group's metadata in 4, 6 and 8 bytes).
@pytest.mark.parametrize("pattern", [(2, 4), (1, 8), (4, 8), (2, 16), (1, 4), (1, 16)])
@pytest.mark.parametrize("k_over", [0, 1, 9])
def test_nm_row_path_k_chunks_and_tile_groups(isa: str, pattern: tuple[int, int], k_over: int,
                                               rng: np.random.Generator) -> None:
    n, m = pattern
    k = 256 * 2 + m * k_over
    for rows, cols, threads in ((24, 40, 2), (65, 16 * 17 + 5, 1), (129, 7, 2)):
        w = sk.prune_nm(rng.standard_normal((k, cols)), n, m)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert_matches(sk.nm_matmul(x, sk.pack_nm(w, n, m), isa=isa, threads=threads), x, w)


# Where the transposed x outgrows 1 MB (nm_avx512.c, NM_RV_XT_BIG: 1:M at 64-row blocks past
# K = 4096, N >= 2 at 32-row blocks past K = 8192) tiles go in groups of 32, handed out from a
# shared counter with the row blocks: several groups, a partial last group and tile, a short
# last row block.
@pytest.mark.parametrize(("pattern", "k", "rows"), [((1, 8), 4104, 65), ((2, 4), 8200, 33)])
def test_nm_row_path_large_k_tile_groups(isa: str, pattern: tuple[int, int], k: int, rows: int,
                                         rng: np.random.Generator) -> None:
    n, m = pattern
    cols = 16 * 33 + 3
    w = sk.prune_nm(rng.standard_normal((k, cols)), n, m)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    for threads in (1, 2):
        assert_matches(sk.nm_matmul(x, sk.pack_nm(w, n, m), isa=isa, threads=threads), x, w)


@pytest.mark.parametrize("min_rows", ["1", "1000000"])
def test_nm_bias_is_added_to_every_row(isa: str, min_rows: str, monkeypatch: pytest.MonkeyPatch,
                                       rng: np.random.Generator) -> None:
    """AVX-512 adds the bias as it stores y (both batch paths, last K chunk only); the other
    ISAs after: either way y = x @ W + bias, partial last tile and K chunks included."""
    monkeypatch.setenv("SPARSEC_NM_ROWVEC_MIN_ROWS", min_rows)
    for rows, (n, m), k, cols in ((1, (2, 4), 64, 33), (40, (2, 4), 1032, 70), (70, (1, 8), 600, 45)):
        w = sk.prune_nm(rng.standard_normal((k, cols)), n, m)
        bias = rng.standard_normal(cols).astype(np.float32)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        y = sk.nm_matmul(x, sk.pack_nm(w, n, m), isa=isa, bias=bias)
        np.testing.assert_allclose(y, x.astype(np.float64) @ w + bias, rtol=1e-4, atol=1e-3)
