"""Offline 2:4 packer for NVIDIA sparse tensor cores (`mma.sp` m16n8k32, fp16/bf16).

The CUDA kernels (kernels/cuda/sp24_kernels.cu) compute Y[batch, C] = X[batch, K] @ W[K, C]
as Y^T = A @ X^T with A = W^T the sparse operand: output channels are the MMA's M rows and
K is the reduction axis, the only axis the hardware lets be 2:4 sparse.

Layout, chosen so that every warp-wide load in the kernel is one coalesced 512-byte (values)
or 128-byte (metadata) read, with no shuffle at run time (the reordering happens here):

- ``values``: uint32 [MT, KT, 32, 4], MT = ceil(C/16) row tiles, KT = K/32 reduction tiles.
  ``values[mt, kt, lane]`` are the four A-fragment registers of thread ``lane`` for the
  16x32 tile (compressed to 16x16), PTX ISA "Matrix fragments for sparse mma.m16n8k32 with
  .f16/.bf16" (the same fragment layout as dense m16n8k16): with g = lane//4, t = lane%4,
  register r holds compressed columns 2t+8*(r//2) and +1 of row g+8*(r%2), low half first.
- ``meta``: uint32 [MT, KT/2, 32]. Per row and 32-wide K tile the hardware reads 8 chunks of
  4 bits (two 2-bit positions, first nonzero in the low bits). For m16n8k32 f16/bf16 two
  threads of each quad supply them (sparsity selector 0: lanes 4g, 4g+1; 1: lanes 4g+2,
  4g+3): thread 4g+2s+h holds K columns 16h..16h+15 of rows g (bits 0-15) and g+8 (bits
  16-31). Two consecutive K tiles therefore fill one register per lane: tile 2j uses
  selector 0, tile 2j+1 selector 1, and ``meta[mt, j, lane]`` is that register.

Hence K must be a multiple of 64; C is padded with zero rows to a multiple of 16. Positions
are strictly increasing inside a chunk, which the `mma.sp::ordered_metadata` form requires
and which rules out the four invalid nibbles (0b0000, 0b0101, 0b1010, 0b1111).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PackedFormatError

TILE_M = 16  # MMA rows (output channels) per tile
TILE_K = 32  # MMA reduction depth per tile (dense K columns)
K_MULTIPLE = 2 * TILE_K  # one metadata register covers two K tiles
DTYPES = ("float16", "bfloat16")

_LANE = np.arange(32)
_G, _T = _LANE // 4, _LANE % 4
_REG = np.arange(4)
# A fragment: (lane, register, half) -> (row, compressed column) inside a 16x16 tile.
_A_ROW = (_G[:, None] + 8 * (_REG[None, :] % 2))[:, :, None].repeat(2, axis=2)
_A_COL = (2 * _T[:, None] + 8 * (_REG[None, :] // 2))[:, :, None] + np.arange(2)[None, None, :]


@dataclass(frozen=True, eq=False)
class PackedSparseTC:
    """A 2:4 [K, C] weight packed for the sparse tensor-core kernels. Build with
    ``pack_sparse_tc`` or ``PackedSparseTC.from_arrays`` (which validates)."""

    k: int
    cols: int
    dtype: str  # "float16" or "bfloat16"
    values: np.ndarray  # uint32 [MT, KT, 32, 4]
    meta: np.ndarray  # uint32 [MT, KT/2, 32]

    @property
    def row_tiles(self) -> int:
        return -(-self.cols // TILE_M)

    @property
    def k_tiles(self) -> int:
        return self.k // TILE_K

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.meta.nbytes)

    @classmethod
    def from_arrays(
        cls, k: int, cols: int, dtype: str, values: np.ndarray, meta: np.ndarray
    ) -> PackedSparseTC:
        """Validate externally supplied buffers: shapes, dtypes and every metadata nibble."""
        check_sparse_tc_shape(k, cols, dtype)
        mt, kt = -(-cols // TILE_M), k // TILE_K
        values, meta = np.asarray(values), np.asarray(meta)
        if values.dtype != np.uint32 or meta.dtype != np.uint32:
            raise PackedFormatError(
                f"expected uint32 values and meta, got {values.dtype} and {meta.dtype}"
            )
        if values.shape != (mt, kt, 32, 4):
            raise PackedFormatError(f"values has shape {values.shape}, expected {(mt, kt, 32, 4)}")
        if meta.shape != (mt, kt // 2, 32):
            raise PackedFormatError(f"meta has shape {meta.shape}, expected {(mt, kt // 2, 32)}")
        positions = decode_meta(meta)  # [MT*16, K/4, 2]
        if not np.all(positions[..., 1] > positions[..., 0]):
            raise PackedFormatError(
                "2:4 metadata positions within a chunk are not strictly increasing "
                "(invalid or unordered nibble)"
            )
        return cls(k, cols, dtype, np.ascontiguousarray(values), np.ascontiguousarray(meta))

    def compressed_bits(self) -> np.ndarray:
        """The compressed operand, uint16 [MT*16, K/2] (undoes the register reordering)."""
        mt, kt = self.row_tiles, self.k_tiles
        halves = np.stack([self.values & 0xFFFF, self.values >> 16], axis=-1).astype(np.uint16)
        tiles = np.zeros((mt, kt, TILE_M, 16), dtype=np.uint16)
        tiles[:, :, _A_ROW, _A_COL] = halves
        return tiles.transpose(0, 2, 1, 3).reshape(mt * TILE_M, kt * 16)

    def to_dense(self) -> np.ndarray:
        """The dense [K, C] float32 weight this packing represents (rounded to ``dtype``)."""
        comp = bits_to_float(self.compressed_bits(), self.dtype)  # [Mp, K/2]
        pos = decode_meta(self.meta).astype(np.intp)  # [Mp, K/4, 2]
        rows = comp.shape[0]
        dense = np.zeros((rows, self.k // 4, 4), dtype=np.float32)
        r, q, s = np.indices(pos.shape, sparse=True)
        dense[r, q, pos] = comp.reshape(rows, self.k // 4, 2)[r, q, s]
        return np.ascontiguousarray(dense.reshape(rows, self.k)[: self.cols].T)


def check_sparse_tc_shape(k: int, cols: int, dtype: str) -> None:
    if dtype not in DTYPES:
        raise PackedFormatError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if k <= 0 or k % K_MULTIPLE:
        raise PackedFormatError(f"K={k} must be a positive multiple of {K_MULTIPLE}")
    if cols <= 0:
        raise PackedFormatError(f"C={cols} must be positive")


def float_to_bits(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 to fp16/bf16 (nearest even) and return the 16-bit patterns."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).view(np.uint16)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(x)
    return np.where(nan, 0x7FC0, rounded).astype(np.uint16)


def bits_to_float(bits: np.ndarray, dtype: str) -> np.ndarray:
    bits = np.asarray(bits, dtype=np.uint16)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to fp16/bf16 and back to float32: the precision the tensor cores see."""
    return bits_to_float(float_to_bits(x, dtype), dtype)


def pack_sparse_tc(w: np.ndarray, dtype: str = "float16") -> PackedSparseTC:
    """Pack a [K, C] weight that is 2:4 sparse along K (axis 0) for the CUDA kernels.

    Raises PackedFormatError if a group of 4 along K holds more than 2 nonzeros (prune with
    ``prune_nm(w, 2, 4)`` first) or if the shape does not tile. Values are rounded to dtype.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise PackedFormatError(f"expected a 2-D weight, got shape {w.shape}")
    k, cols = w.shape
    check_sparse_tc_shape(k, cols, dtype)
    mt, kt = -(-cols // TILE_M), k // TILE_K
    a = np.zeros((mt * TILE_M, k), dtype=np.float32)
    a[:cols] = w.T
    chunks = a.reshape(mt * TILE_M, k // 4, 4)
    nonzero = chunks != 0
    if np.any(nonzero.sum(axis=-1) > 2):
        raise PackedFormatError("weight is not 2:4 sparse along K (prune it first)")
    # Nonzeros first, then the lowest zero positions; sorted, so strictly increasing.
    idx = np.arange(4)
    pos = np.sort(np.argsort(np.where(nonzero, idx, 4 + idx), axis=-1, kind="stable")[..., :2], -1)
    comp = np.take_along_axis(chunks, pos, axis=-1).reshape(mt * TILE_M, k // 2)
    bits = float_to_bits(comp, dtype)
    tiles = bits.reshape(mt, TILE_M, kt, 16).transpose(0, 2, 1, 3)  # [MT, KT, 16, 16]
    halves = tiles[:, :, _A_ROW, _A_COL].astype(np.uint32)  # [MT, KT, 32, 4, 2]
    values = halves[..., 0] | (halves[..., 1] << 16)
    return PackedSparseTC(k, cols, dtype, np.ascontiguousarray(values), encode_meta(pos, mt, kt))


def encode_meta(pos: np.ndarray, mt: int, kt: int) -> np.ndarray:
    """Positions [MT*16, K/4, 2] -> metadata registers uint32 [MT, KT/2, 32] (see module doc)."""
    nib = (pos[..., 0] | (pos[..., 1] << 2)).astype(np.uint32)  # [Mp, K/4]
    # [MT, row16, KT, half, chunk4] -> 16 bits per (row, K tile, half)
    nib = nib.reshape(mt, TILE_M, kt, 2, 4)
    h16 = np.sum(nib << (4 * np.arange(4, dtype=np.uint32)), axis=-1, dtype=np.uint32)
    h16 = h16.transpose(0, 2, 3, 1)  # [MT, KT, half, row16]
    word = h16[..., :8] | (h16[..., 8:] << 16)  # [MT, KT, half, g]
    # lane = 4g + 2*(kt parity) + half
    word = word.reshape(mt, kt // 2, 2, 2, 8).transpose(0, 1, 4, 2, 3)
    return np.ascontiguousarray(word.reshape(mt, kt // 2, 32), dtype=np.uint32)


def decode_meta(meta: np.ndarray) -> np.ndarray:
    """Inverse of encode_meta: uint32 [MT, KT/2, 32] -> positions uint8 [MT*16, K/4, 2]."""
    meta = np.asarray(meta, dtype=np.uint32)
    mt, pairs = meta.shape[:2]
    word = meta.reshape(mt, pairs, 8, 2, 2).transpose(0, 1, 3, 4, 2)  # [MT, P, parity, half, g]
    word = word.reshape(mt, 2 * pairs, 2, 8)
    h16 = np.concatenate([word & 0xFFFF, word >> 16], axis=-1)  # [MT, KT, half, row16]
    nib = (h16[..., None] >> (4 * np.arange(4, dtype=np.uint32))) & 0xF  # [MT, KT, half, row, q]
    nib = nib.transpose(0, 3, 1, 2, 4).reshape(mt * TILE_M, 2 * pairs * 8)
    return np.stack([nib & 3, nib >> 2], axis=-1).astype(np.uint8)
