"""The tensor-core 2:4 packer and the warp-register emulation of the CUDA kernels."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.kernels import PackedFormatError, prune_nm
from sparsec.kernels.packing_sparse_tc import (
    PackedSparseTC,
    bits_to_float,
    decode_meta,
    float_to_bits,
    pack_sparse_tc,
    round_to,
)
from sparsec.kernels.sparse_tc_emulation import emulate_matmul, mma_sp_m16n8k32


def _weight(rng: np.random.Generator, k: int, c: int) -> np.ndarray:
    return prune_nm(rng.standard_normal((k, c)).astype(np.float32), 2, 4)


def _dense_ref(x: np.ndarray, w: np.ndarray, dtype: str) -> np.ndarray:
    return round_to(x, dtype).astype(np.float64) @ round_to(w, dtype).astype(np.float64)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("k", "c", "batch"), [(64, 16, 1), (128, 40, 3), (256, 96, 17), (192, 8, 9)])
def test_emulation_equals_dense(rng: np.random.Generator, dtype: str, k: int, c: int, batch: int) -> None:
    w = _weight(rng, k, c)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    packed = pack_sparse_tc(w, dtype)
    y = emulate_matmul(packed, x)
    ref = _dense_ref(x, w, dtype)
    assert y.shape == (batch, c)
    # Inputs are identical fp16/bf16 numbers and products exact: only fp32 rounding differs.
    assert np.max(np.abs(y - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))


def test_emulation_with_fewer_than_two_nonzeros_per_chunk(rng: np.random.Generator) -> None:
    w = _weight(rng, 128, 32)
    w[rng.random(w.shape) < 0.5] = 0.0  # chunks with 0 or 1 nonzero: padded positions
    x = rng.standard_normal((5, 128)).astype(np.float32)
    packed = pack_sparse_tc(w)
    assert np.max(np.abs(emulate_matmul(packed, x) - _dense_ref(x, w, "float16"))) < 1e-4


def test_round_trip_and_positions(rng: np.random.Generator) -> None:
    w = _weight(rng, 128, 24)
    packed = pack_sparse_tc(w, "bfloat16")
    assert packed.values.shape == (2, 4, 32, 4) and packed.meta.shape == (2, 2, 32)
    assert np.array_equal(packed.to_dense(), round_to(w, "bfloat16"))
    pos = decode_meta(packed.meta)
    assert np.all(pos[..., 1] > pos[..., 0])
    # 2 bytes per kept value + 2 bits per kept value, rows padded to 16.
    assert packed.nbytes == 32 * 128 // 2 * 2 + 32 * 128 // 2 // 4


def test_layout_catches_a_swapped_register(rng: np.random.Generator) -> None:
    """A packing bug (two registers of a lane swapped) changes the emulated product."""
    w = _weight(rng, 64, 16)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    packed = pack_sparse_tc(w)
    bad = packed.values.copy()
    bad[0, 0, 5, [0, 1]] = bad[0, 0, 5, [1, 0]]
    broken = PackedSparseTC(packed.k, packed.cols, packed.dtype, bad, packed.meta)
    assert np.max(np.abs(emulate_matmul(broken, x) - _dense_ref(x, w, "float16"))) > 1e-2


def test_selector_picks_the_other_lane_pair(rng: np.random.Generator) -> None:
    """With selector 1, metadata comes from lanes 2,3 of each quad: 0,1 are ignored."""
    a = rng.integers(0, 2**32, size=(32, 4), dtype=np.uint64).astype(np.uint32) & 0x3BFF3BFF
    b = rng.integers(0, 2**32, size=(32, 4), dtype=np.uint64).astype(np.uint32) & 0x3BFF3BFF
    e = np.full(32, 0x44444444, dtype=np.uint32)  # positions (0, 1) everywhere
    e_noise = e.copy()
    e_noise[np.arange(32) % 4 < 2] = 0xEEEEEEEE  # positions (2, 3) in the ignored lanes
    c = np.zeros((32, 4), dtype=np.float32)
    same = mma_sp_m16n8k32(a, b, c, e, 1, "float16")
    assert np.array_equal(same, mma_sp_m16n8k32(a, b, c, e_noise, 1, "float16"))
    assert not np.array_equal(same, mma_sp_m16n8k32(a, b, c, e_noise, 0, "float16"))


def test_bf16_rounding_is_nearest_even() -> None:
    # 1 + 2^-8 is halfway between two bf16 numbers: ties go to the even one (1.0);
    # 1 + 3*2^-8 is halfway too and rounds up to the even 1 + 2^-6.
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, np.inf], dtype=np.float32)
    back = bits_to_float(float_to_bits(x, "bfloat16"), "bfloat16")
    assert back.tolist() == [1.0, 1.0, 1.0 + 2**-6, -2.5, np.inf]
    assert np.isnan(bits_to_float(float_to_bits(np.array([np.nan]), "bfloat16"), "bfloat16")[0])


def test_not_2_4_rejected(rng: np.random.Generator) -> None:
    w = rng.standard_normal((64, 16)).astype(np.float32)
    with pytest.raises(PackedFormatError, match="not 2:4"):
        pack_sparse_tc(w)


@pytest.mark.parametrize(("shape", "dtype", "match"), [
    ((96, 16), "float16", "multiple of 64"),
    ((64, 0), "float16", "must be positive"),
    ((64, 16), "float32", "dtype must be"),
    ((64,), "float16", "2-D"),
])
def test_bad_shapes_rejected(shape: tuple[int, ...], dtype: str, match: str) -> None:
    with pytest.raises(PackedFormatError, match=match):
        pack_sparse_tc(np.zeros(shape, dtype=np.float32), dtype)


def test_from_arrays_validates(rng: np.random.Generator) -> None:
    packed = pack_sparse_tc(_weight(rng, 128, 32))
    ok = PackedSparseTC.from_arrays(128, 32, "float16", packed.values, packed.meta)
    assert np.array_equal(ok.to_dense(), packed.to_dense())
    with pytest.raises(PackedFormatError, match="shape"):
        PackedSparseTC.from_arrays(128, 32, "float16", packed.values[:, :2], packed.meta)
    with pytest.raises(PackedFormatError, match="shape"):
        PackedSparseTC.from_arrays(128, 48, "float16", packed.values, packed.meta)
    with pytest.raises(PackedFormatError, match="uint32"):
        PackedSparseTC.from_arrays(128, 32, "float16", packed.values.astype(np.int64), packed.meta)
    for nibble in (0x0, 0x5, 0xA, 0xF, 0x1):  # the four invalid codes and an unordered one (1, 0)
        meta = packed.meta.copy()
        meta[1, 0, 7] = (meta[1, 0, 7] & ~np.uint32(0xF0)) | np.uint32(nibble << 4)
        with pytest.raises(PackedFormatError, match="strictly increasing"):
            PackedSparseTC.from_arrays(128, 32, "float16", packed.values, meta)
        bad = PackedSparseTC(128, 32, "float16", packed.values, meta)
        with pytest.raises(PackedFormatError, match="strictly increasing"):
            emulate_matmul(bad, np.ones((1, 128), dtype=np.float32))


def test_emulation_rejects_wrong_x_shape(rng: np.random.Generator) -> None:
    packed = pack_sparse_tc(_weight(rng, 64, 16))
    with pytest.raises(PackedFormatError, match="expected X"):
        emulate_matmul(packed, np.ones((2, 128), dtype=np.float32))
