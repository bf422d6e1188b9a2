"""Offline block-sparse packer: dense weight -> BK x 16 blocks in a per-tile CSR.

Blocks span 16 output columns (one AVX-512 vector) and BK consecutive k: a block row is a
single vector FMA against one broadcast input, so above ~80% zeros the kernel runs at
dense-GEMM efficiency on the surviving blocks. BK > 1 amortizes the 4-byte block index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._buffers import aligned_copy
from .errors import PackedFormatError

TILE = 16
SUPPORTED_BK = (1, 2, 4, 8, 16)
INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class PackedBlock:
    """A block-sparse [K, C] weight for ``block_matmul``. Tile t owns blocks
    ``tile_ptr[t]:tile_ptr[t+1]``; block b covers rows ``kidx[b]:kidx[b]+bk``."""

    bk: int
    k: int
    cols: int
    tile_ptr: np.ndarray  # int32, (tiles + 1,)
    kidx: np.ndarray  # int32, (blocks,)
    values: np.ndarray  # float32, (blocks * bk * 16,)

    @property
    def tiles(self) -> int:
        return -(-self.cols // TILE)

    @property
    def nblocks(self) -> int:
        return int(self.kidx.size)

    @property
    def density(self) -> float:
        return self.nblocks * self.bk * TILE / (self.k * self.tiles * TILE)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.kidx.nbytes + self.tile_ptr.nbytes)

    @classmethod
    def from_arrays(
        cls,
        bk: int,
        k: int,
        cols: int,
        tile_ptr: np.ndarray,
        kidx: np.ndarray,
        values: np.ndarray,
    ) -> PackedBlock:
        """Validate externally supplied packed buffers (lengths, pointers, block rows)."""
        _check_shape(bk, k, cols)
        tiles = -(-cols // TILE)
        tile_ptr, kidx, values = np.asarray(tile_ptr), np.asarray(kidx), np.asarray(values)
        if tile_ptr.dtype != np.int32 or kidx.dtype != np.int32 or values.dtype != np.float32:
            raise PackedFormatError("expected int32 tile_ptr and kidx, float32 values")
        if tile_ptr.size != tiles + 1:
            raise PackedFormatError(f"tile_ptr has {tile_ptr.size} entries, expected {tiles + 1}")
        if tile_ptr[0] != 0 or tile_ptr[-1] != kidx.size or np.any(np.diff(tile_ptr) < 0):
            raise PackedFormatError("tile_ptr must rise from 0 to the number of blocks")
        if values.size != kidx.size * bk * TILE:
            raise PackedFormatError(
                f"values has {values.size} elements, expected {kidx.size * bk * TILE}"
            )
        if kidx.size and (kidx.min() < 0 or kidx.max() > k - bk):
            raise PackedFormatError(f"block row out of range [0, {k - bk}]")
        # Blocks of a tile rise by at least bk rows (pack_block's canonical form): the kernel
        # would add overlapping or repeated blocks twice.
        tile_of_block = np.repeat(np.arange(tiles), np.diff(tile_ptr))
        same_tile = tile_of_block[1:] == tile_of_block[:-1]
        if np.any(same_tile & (np.diff(kidx.astype(np.int64)) < bk)):
            raise PackedFormatError("block rows of a tile overlap or are not increasing")
        return cls(
            bk, k, cols, aligned_copy(tile_ptr, np.int32), aligned_copy(kidx, np.int32),
            aligned_copy(values, np.float32),
        )

    def to_dense(self) -> np.ndarray:
        """The dense [K, C] weight this packing represents."""
        dense = np.zeros((self.k, self.tiles * TILE), dtype=np.float32)
        tile_of_block = np.repeat(np.arange(self.tiles), np.diff(self.tile_ptr))
        rows = self.kidx[:, None] + np.arange(self.bk)[None, :]  # [blocks, bk]
        cols = tile_of_block[:, None] * TILE + np.arange(TILE)[None, :]  # [blocks, 16]
        dense[rows[:, :, None], cols[:, None, :]] = self.values.reshape(-1, self.bk, TILE)
        return np.ascontiguousarray(dense[:, : self.cols])


def _check_shape(bk: int, k: int, cols: int) -> None:
    if bk not in SUPPORTED_BK:
        raise PackedFormatError(f"block height must be one of {SUPPORTED_BK}, got {bk}")
    if k <= 0 or cols <= 0 or k % bk:
        raise PackedFormatError(f"K={k} must be a positive multiple of bk={bk}; C={cols} > 0")
    if k > INT32_MAX or cols > INT32_MAX:  # as the C kernels and the ONNX Runtime ops
        raise PackedFormatError(f"K={k} and C={cols} must be at most {INT32_MAX}")


def _blocks(w: np.ndarray, bk: int) -> np.ndarray:
    """[K, C] -> [tiles, K/bk, bk, 16], zero-padding C to whole tiles."""
    k, cols = w.shape
    tiles = -(-cols // TILE)
    padded = np.zeros((k, tiles * TILE), dtype=np.float32)
    padded[:, :cols] = w
    return padded.reshape(k // bk, bk, tiles, TILE).transpose(2, 0, 1, 3)


def prune_block(w: np.ndarray, density: float, bk: int = 1) -> np.ndarray:
    """Keep the ``density`` fraction of bk x 16 blocks with the largest L2 norm."""
    w = np.asarray(w, dtype=np.float32)
    k, cols = w.shape
    _check_shape(bk, k, cols)
    blocks = _blocks(w, bk)
    norms = np.square(blocks).sum(axis=(2, 3)).reshape(-1)
    keep_count = int(round(density * norms.size))
    keep = np.zeros(norms.size, dtype=bool)
    if keep_count:
        keep[np.argpartition(-norms, keep_count - 1)[:keep_count]] = True
    blocks = blocks * keep.reshape(blocks.shape[:2])[:, :, None, None]
    dense = blocks.transpose(1, 2, 0, 3).reshape(k, -1)
    return np.ascontiguousarray(dense[:, :cols])


def pack_block(w: np.ndarray, bk: int = 1) -> PackedBlock:
    """Pack every bk x 16 block of ``w`` that holds a nonzero (lossless for any ``w``)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise PackedFormatError(f"expected a 2-D weight, got shape {w.shape}")
    k, cols = w.shape
    _check_shape(bk, k, cols)
    blocks = _blocks(w, bk)
    keep = np.any(blocks != 0, axis=(2, 3))  # [tiles, K/bk]
    tile_ptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    _, kb = np.nonzero(keep)  # row-major: tile by tile, rows ascending
    return PackedBlock(
        bk, k, cols, aligned_copy(tile_ptr, np.int32), aligned_copy(kb * bk, np.int32),
        aligned_copy(blocks[keep], np.float32),
    )
