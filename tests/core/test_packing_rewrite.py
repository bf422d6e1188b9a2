"""The N:M packer worked in the weight's own layout packs exactly what the former packer did
(which transposed the weight to [tiles, groups, m, lane] first): same values, same metadata,
same refusal of a too-dense weight."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.kernels import pack_nm, prune_nm
from sparsec.kernels.errors import PackedFormatError
from sparsec.kernels.packing_nm import TILE, _pack_tiles, _slot_positions, encode_positions


def _former_pack_tiles(w: np.ndarray, n: int, m: int, tiles: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The packer before the rewrite, verbatim."""
    k, cols = w.shape
    padded = np.zeros((k, tiles * TILE), dtype=np.float32)
    padded[:, :cols] = w
    wg = np.ascontiguousarray(padded.reshape(groups, m, tiles, TILE).transpose(2, 0, 1, 3))
    nonzero = wg != 0
    counts = nonzero.sum(axis=2, dtype=np.int16)
    if np.any(counts > n):
        raise PackedFormatError(f"weight is not {n}:{m} sparse along K (prune it first)")
    code = np.zeros(counts.shape, dtype=np.int32)
    for i in range(m):
        code |= nonzero[:, :, i, :].astype(np.int32) << i
    pos = np.ascontiguousarray(np.moveaxis(_slot_positions(n, m)[code], -1, 2))
    vals = np.take_along_axis(wg, pos.astype(np.intp), axis=2)
    return vals, encode_positions(pos, m)


def _weight(rng: np.random.Generator, k: int, cols: int, n: int, m: int) -> np.ndarray:
    w = prune_nm(rng.standard_normal((k, cols)).astype(np.float32), n, m)
    w[rng.random(w.shape) < 0.3] = 0.0  # groups with fewer than n nonzeros
    w[rng.random(w.shape) < 0.05] = -0.0  # negative zeros count as zeros, and keep their sign bit
    return w


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (4, 4), (1, 8), (2, 8), (4, 8), (7, 8), (2, 16), (8, 16), (16, 16)])
@pytest.mark.parametrize("k_groups,cols", [(1, 1), (3, 16), (5, 17), (7, 40), (16, 128), (9, 250)])
def test_pack_tiles_equals_the_former_packer(n: int, m: int, k_groups: int, cols: int) -> None:
    rng = np.random.default_rng(1000 * n + 10 * m + cols)
    w = _weight(rng, k_groups * m, cols, n, m)
    tiles = -(-cols // TILE)
    got, want = _pack_tiles(w, n, m, tiles, k_groups), _former_pack_tiles(w, n, m, tiles, k_groups)
    for g, e in zip(got, want, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert g.tobytes() == e.tobytes()  # bit for bit (the sign of -0.0 included)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (4, 16)])
def test_pack_tiles_on_a_column_slice_equals_the_former_packer(n: int, m: int) -> None:
    """pack_nm packs a few tiles at a time from a column slice (rows not contiguous)."""
    rng = np.random.default_rng(7)
    w = _weight(rng, 6 * m, 100, n, m)
    part = w[:, 32:85]
    tiles = -(-part.shape[1] // TILE)
    for g, e in zip(_pack_tiles(part, n, m, tiles, 6), _former_pack_tiles(part, n, m, tiles, 6), strict=True):
        assert g.tobytes() == e.tobytes()


@pytest.mark.parametrize("n,m", [(2, 4), (3, 8), (8, 16)])
def test_pack_nm_refuses_a_group_above_n_as_before(n: int, m: int) -> None:
    rng = np.random.default_rng(3)
    w = _weight(rng, 4 * m, 33, n, m)
    w[m : m + n + 1, 20] = 1.0  # one group of column 20 holds n + 1 nonzeros
    with pytest.raises(PackedFormatError, match=f"not {n}:{m} sparse"):
        _former_pack_tiles(w, n, m, 3, 4)
    with pytest.raises(PackedFormatError, match=f"not {n}:{m} sparse"):
        pack_nm(w, n, m)


def test_pack_nm_round_trips_a_bert_sized_layer() -> None:
    w = _weight(np.random.default_rng(0), 768, 3072, 2, 4)
    packed = pack_nm(w, 2, 4)
    np.testing.assert_array_equal(packed.to_dense(), w)  # -0.0 == 0.0: zeros may lose their sign
