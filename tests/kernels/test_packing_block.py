"""Block packer: round trip, pruning density, and rejection of malformed data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.kernels import PackedBlock, PackedFormatError, pack_block, prune_block


@settings(max_examples=30, deadline=None)
@given(
    bk=st.sampled_from([1, 2, 4, 8]),
    kblocks=st.integers(1, 12),
    cols=st.integers(1, 50),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip(bk: int, kblocks: int, cols: int, density: float, seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal((kblocks * bk, cols)).astype(np.float32)
    pruned = prune_block(w, density, bk)
    packed = pack_block(pruned, bk)
    np.testing.assert_array_equal(packed.to_dense(), pruned)
    assert packed.nblocks <= round(density * packed.tiles * kblocks)


def test_prune_keeps_the_strongest_blocks() -> None:
    w = np.zeros((4, 16), np.float32)
    w[1] = 1.0
    w[3] = 3.0
    np.testing.assert_array_equal(prune_block(w, 0.25, 1), np.where(np.arange(4)[:, None] == 3,
                                                                     w, 0))


def _packed() -> PackedBlock:
    w = prune_block(np.random.default_rng(0).standard_normal((32, 40)), 0.3, 4)
    return pack_block(w, 4)


def test_from_arrays_accepts_valid_buffers() -> None:
    p = _packed()
    q = PackedBlock.from_arrays(p.bk, p.k, p.cols, p.tile_ptr, p.kidx, p.values)
    np.testing.assert_array_equal(q.to_dense(), p.to_dense())


@pytest.mark.parametrize("corruption", ["kidx_high", "kidx_negative", "ptr_decreasing",
                                        "ptr_end", "ptr_short", "values_short"])
def test_from_arrays_rejects_malformed(corruption: str) -> None:
    p = _packed()
    ptr, kidx, values = p.tile_ptr.copy(), p.kidx.copy(), p.values.copy()
    if corruption == "kidx_high":
        kidx[-1] = p.k - p.bk + 1
    elif corruption == "kidx_negative":
        kidx[0] = -4
    elif corruption == "ptr_decreasing":
        ptr[1], ptr[2] = ptr[2], ptr[1] - 1
    elif corruption == "ptr_end":
        ptr[-1] += 1
    elif corruption == "ptr_short":
        ptr = ptr[:-1]
    else:
        values = values[:-1]
    with pytest.raises(PackedFormatError):
        PackedBlock.from_arrays(p.bk, p.k, p.cols, ptr, kidx, values)


def test_rejects_bad_block_height() -> None:
    with pytest.raises(PackedFormatError):
        pack_block(np.zeros((6, 4), np.float32), 3)
    with pytest.raises(PackedFormatError):
        pack_block(np.zeros((6, 4), np.float32), 4)  # K not a multiple of bk
