"""Offline N:M packer: dense masked weights -> tiled values + log2(M)-bit positions.

Layout (see src/sk.h): output columns are cut into tiles of 16 (one AVX-512 vector); inside
a tile, records are ordered (group, slot), each record holding 16 values and 16 positions.
This makes the kernel's two streams (values, metadata) strictly sequential and lets one
vector load fetch a record. Positions use log2(M) bits, the minimum; a byte per position
would cap 2:4 at 1.6x over dense at batch 1 where the bit-packed limit is 1.88x.
Everything here is vectorized numpy: packing a 4096x11008 matrix takes well under a second.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._buffers import aligned_copy, aligned_empty
from ._native import optional_function
from .errors import PackedFormatError

TILE = 16
SUPPORTED_M = (4, 8, 16)
INT32_MAX = 2**31 - 1
META_WORDS = {4: 2, 8: 3, 16: 4}  # uint16 words per (tile, group, slot) record
_LANE = np.arange(TILE, dtype=np.uint64)


@dataclass(frozen=True, eq=False)
class PackedNM:
    """An N:M sparse [K, C] weight packed for ``nm_matmul``. Build with ``pack_nm`` or
    ``PackedNM.from_arrays`` (which validates: the kernel trusts a constructed object)."""

    n: int
    m: int
    k: int
    cols: int
    values: np.ndarray  # float32, (tiles * K/M * n * 16,)
    meta: np.ndarray  # uint16, (tiles * K/M * n * META_WORDS[m],)

    @property
    def tiles(self) -> int:
        return -(-self.cols // TILE)

    @property
    def nbytes(self) -> int:
        """Bytes the kernel streams per product (values + metadata)."""
        return int(self.values.nbytes + self.meta.nbytes)

    @classmethod
    def from_arrays(
        cls, n: int, m: int, k: int, cols: int, values: np.ndarray, meta: np.ndarray
    ) -> PackedNM:
        """Validate externally supplied packed buffers (e.g. ONNX initializers)."""
        check_nm_shape(n, m, k, cols)
        tiles = -(-cols // TILE)
        records = tiles * (k // m) * n
        values = np.asarray(values)
        meta = np.asarray(meta)
        if values.dtype != np.float32 or meta.dtype != np.uint16:
            raise PackedFormatError(
                f"expected float32 values and uint16 meta, got {values.dtype} and {meta.dtype}"
            )
        if values.size != records * TILE:
            raise PackedFormatError(f"values has {values.size} elements, expected {records * TILE}")
        if meta.size != records * META_WORDS[m]:
            raise PackedFormatError(
                f"meta has {meta.size} elements, expected {records * META_WORDS[m]}"
            )
        pos = decode_positions(meta, n, m, tiles, k // m)
        # Positions must be strictly increasing within a group: distinct and canonical, so a
        # corrupted record cannot silently alias two slots onto one input.
        if n > 1 and not np.all(np.diff(pos.astype(np.int16), axis=2) > 0):
            raise PackedFormatError("N:M positions within a group are not strictly increasing")
        return cls(n, m, k, cols, aligned_copy(values, np.float32), aligned_copy(meta, np.uint16))

    def positions(self) -> np.ndarray:
        """Decoded positions, [tiles, groups, n, 16] uint8 (for tests and debugging)."""
        return decode_positions(self.meta, self.n, self.m, self.tiles, self.k // self.m)

    def to_dense(self) -> np.ndarray:
        """The dense [K, C] weight this packing represents (exact inverse of pack_nm)."""
        tiles, groups = self.tiles, self.k // self.m
        vals = self.values.reshape(tiles, groups, self.n, TILE)
        pos = self.positions().astype(np.intp)
        dense = np.zeros((tiles, groups, TILE, self.m), dtype=np.float32)
        t, g, j, lane = np.indices(pos.shape, sparse=True)
        dense[t, g, lane, pos] = vals[t, g, j, lane]
        # [tiles, groups, lane, m] -> [groups, m, tiles, lane] -> [K, C]
        full = dense.transpose(1, 3, 0, 2).reshape(self.k, tiles * TILE)
        return np.ascontiguousarray(full[:, : self.cols])


def check_nm_shape(n: int, m: int, k: int, cols: int) -> None:
    if m not in SUPPORTED_M:
        raise PackedFormatError(f"M must be one of {SUPPORTED_M}, got {m}")
    if not 1 <= n <= m:
        raise PackedFormatError(f"N must be in [1, M={m}], got {n}")
    if k <= 0 or cols <= 0 or k % m:
        raise PackedFormatError(f"K={k} must be a positive multiple of M={m}; C={cols} > 0")
    if k > INT32_MAX or cols > INT32_MAX:  # as the C kernels and the ONNX Runtime ops
        raise PackedFormatError(f"K={k} and C={cols} must be at most {INT32_MAX}")


def prune_nm(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest-magnitude weights of every group of m along K (axis 0)."""
    w = np.asarray(w, dtype=np.float32)
    k, cols = w.shape
    check_nm_shape(n, m, k, cols)
    groups = w.reshape(k // m, m, cols)
    order = np.argsort(-np.abs(groups), axis=1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :n, :], True, axis=1)
    return np.where(keep, groups, 0.0).reshape(k, cols).astype(np.float32)


def prune_nm_native(w2: np.ndarray, n: int, m: int) -> np.ndarray | None:
    """`w2` [rows, K] (float32) with the n largest-magnitude weights of every group of m along K
    kept, in `w2`'s memory order, by the kernel library's `sk_nm_prune` in one pass (numpy's
    |W|, mask and masked copy take three). The same result as
    `sparsec.nm_pattern.nm_mask` on |W| applied as `criteria.masked` applies it. None where the
    library is missing or predates it, `w2` is neither C- nor F-ordered, m > 8, or a weight is
    NaN or infinite: the caller's numpy path handles those."""
    import ctypes

    if w2.ndim != 2 or w2.dtype != np.float32 or m > 8 or w2.shape[1] % m or not w2.size:
        return None
    prune = optional_function("sk_nm_prune")
    if prune is None:
        return None
    if w2.flags.c_contiguous:  # groups are m neighbours in a row
        src, out, along_rows = w2, np.empty(w2.shape, np.float32), 0
        view = out
    elif w2.flags.f_contiguous:  # a MatMul [K, N] seen as [N, K]: groups run down the rows of [K, N]
        src, out, along_rows = w2.T, np.empty(w2.T.shape, np.float32), 1
        view = out.T
    else:
        return None
    f32p = ctypes.POINTER(ctypes.c_float)
    status = prune(
        src.ctypes.data_as(f32p), src.shape[1], src.shape[0], src.shape[1], n, m, along_rows,
        out.ctypes.data_as(f32p), out.shape[1],
    )
    return view if status == 0 else None


def pack_nm(w: np.ndarray, n: int, m: int) -> PackedNM:
    """Pack a [K, C] weight whose groups of m along K hold at most n nonzeros.

    Raises PackedFormatError if a group holds more than n nonzeros (prune first with
    ``prune_nm``): packing is lossless by contract.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise PackedFormatError(f"expected a 2-D weight, got shape {w.shape}")
    k, cols = w.shape
    check_nm_shape(n, m, k, cols)
    tiles, groups = -(-cols // TILE), k // m
    values = aligned_empty(tiles * groups * n * TILE, np.float32)
    meta = aligned_empty(tiles * groups * n * META_WORDS[m], np.uint16)
    if not _pack_native(w, n, m, values, meta):
        _pack_numpy(w, n, m, values, meta)
    values.flags.writeable = False
    meta.flags.writeable = False
    return PackedNM(n, m, k, cols, values, meta)


def _pack_native(w: np.ndarray, n: int, m: int, values: np.ndarray, meta: np.ndarray) -> bool:
    """Pack with the kernel library's `sk_nm_pack` (one pass, ~10x numpy's time); False when
    the library is not built or predates it."""
    import ctypes

    pack = optional_function("sk_nm_pack")
    if pack is None:
        return False
    if w.strides[1] != 4 or w.strides[0] % 4 or w.strides[0] < 0:
        w = np.ascontiguousarray(w)
    status = pack(
        w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), w.strides[0] // 4, w.shape[0], w.shape[1], n, m,
        values.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), values.size,
        meta.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)), meta.size,
    )
    if status != 0:  # shapes were checked: a group with more than n nonzeros
        raise PackedFormatError(f"weight is not {n}:{m} sparse along K (prune it first)")
    return True


def _pack_numpy(w: np.ndarray, n: int, m: int, values: np.ndarray, meta: np.ndarray) -> None:
    k, cols = w.shape
    tiles, groups = -(-cols // TILE), k // m
    # Tiles are independent and contiguous in both outputs: pack a few at a time, so the
    # temporaries (several times the weight's size) stay small for LM-head-sized weights.
    step = max(1, _CHUNK_ELEMENTS // (k * TILE))
    for t0 in range(0, tiles, step):
        t1 = min(tiles, t0 + step)
        vals, codes = _pack_tiles(w[:, t0 * TILE : min(cols, t1 * TILE)], n, m, t1 - t0, groups)
        values[t0 * groups * n * TILE : t1 * groups * n * TILE] = vals.reshape(-1)
        words = META_WORDS[m]
        meta[t0 * groups * n * words : t1 * groups * n * words] = codes.reshape(-1)


_CHUNK_ELEMENTS = 1 << 22  # weights per packing step (16 MB of fp32)


def _pack_tiles(w: np.ndarray, n: int, m: int, tiles: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Values [tiles, groups, n, 16] and meta records for the columns of `tiles` tiles."""
    k, cols = w.shape
    width = tiles * TILE
    # Worked in the weight's own layout, [groups, m, C] (a view, no copy): each group member
    # is a contiguous row. Only the n-slot outputs are transposed to [tiles, groups, n, lane],
    # half the bytes of the weight for 2:4 (transposing the weight first took twice as long).
    w3 = w.reshape(groups, m, cols)
    code_type = np.uint8 if m <= 8 else np.uint16
    code = np.zeros((groups, cols), dtype=code_type)  # bit i: member i is nonzero
    count = np.zeros((groups, cols), dtype=np.uint8)
    for i in range(m):
        nonzero = (w3[:, i, :] != 0).view(np.uint8)
        code |= nonzero.astype(code_type, copy=False) << i
        count += nonzero
    if np.any(count > n):
        raise PackedFormatError(f"weight is not {n}:{m} sparse along K (prune it first)")
    del count
    # Slots hold the nonzeros, then the lowest zero positions, in increasing position order
    # (the canonical form from_arrays checks). No sorting (argsort over tiny groups is slow):
    # each group's nonzero pattern, an m-bit code, indexes a table of its n positions.
    table = _slot_positions(n, m)
    pos = np.zeros((groups, n, width), dtype=np.uint8)  # padding columns: positions 0..n-1, value 0
    vals = np.zeros((groups, n, width), dtype=np.float32)
    if cols < width:
        pos[:, :, cols:] = table[0][None, :, None]
    for j in range(n):
        pj = table[:, j][code]  # [groups, C]
        pos[:, j, :cols] = pj
        vals[:, j, :cols] = np.take_along_axis(w3, pj[:, None, :].astype(np.intp), axis=1)[:, 0, :]
    del code
    vals = np.ascontiguousarray(vals.reshape(groups, n, tiles, TILE).transpose(2, 0, 1, 3))
    pos = np.ascontiguousarray(pos.reshape(groups, n, tiles, TILE).transpose(2, 0, 1, 3))
    return vals, encode_positions(pos, m)


@functools.cache
def _slot_positions(n: int, m: int) -> np.ndarray:
    """[2**m, n] uint8: for each nonzero pattern of a group (bit i = position i), the positions
    its n slots hold: the nonzeros, then the lowest zeros, in increasing order. Patterns with
    more than n nonzeros never reach the table (pack_nm refuses them first)."""
    table = np.zeros((1 << m, n), dtype=np.uint8)
    for code in range(1 << m):
        nonzeros = [i for i in range(m) if code >> i & 1]
        zeros = [i for i in range(m) if not code >> i & 1]
        table[code] = sorted((nonzeros + zeros)[:n])
    return table


def encode_positions(pos: np.ndarray, m: int) -> np.ndarray:
    """[..., 16] positions -> [..., META_WORDS[m]] uint16 records (layout in src/sk.h)."""
    p = np.asarray(pos)
    lanes = [p[..., lane].astype(np.uint64) for lane in range(TILE)]  # one pass per lane: no [..., 16] uint64 temporary
    if m == 4:
        word = np.zeros(p.shape[:-1], dtype=np.uint64)
        for lane, q in enumerate(lanes):
            word |= q << np.uint64(2 * lane)
        return word.astype("<u4")[..., None].view("<u2")
    if m == 8:
        lo = np.zeros(p.shape[:-1], dtype=np.uint64)
        hi = np.zeros(p.shape[:-1], dtype=np.uint64)
        for lane, q in enumerate(lanes):
            lo |= (q & np.uint64(3)) << np.uint64(2 * lane)
            hi |= ((q >> np.uint64(2)) & np.uint64(1)) << np.uint64(lane)
        return np.concatenate([lo.astype("<u4")[..., None].view("<u2"), hi.astype("<u2")[..., None]], axis=-1)
    word = np.zeros(p.shape[:-1], dtype=np.uint64)
    for lane, q in enumerate(lanes):
        word |= q << np.uint64(32 * (lane & 1) + 4 * (lane >> 1))
    return word.astype("<u8")[..., None].view("<u2")


def decode_positions(meta: np.ndarray, n: int, m: int, tiles: int, groups: int) -> np.ndarray:
    """Inverse of encode_positions: flat uint16 meta -> [tiles, groups, n, 16] uint8."""
    rec = np.ascontiguousarray(meta, dtype="<u2").reshape(tiles, groups, n, META_WORDS[m])
    if m == 4:
        word = rec.view("<u4").astype(np.uint64)  # [..., 1]
        pos = (word >> (2 * _LANE)) & 3
    elif m == 8:
        lo = np.ascontiguousarray(rec[..., :2]).view("<u4").astype(np.uint64)
        hi = rec[..., 2:3].astype(np.uint64)
        pos = ((lo >> (2 * _LANE)) & 3) | (((hi >> _LANE) & 1) << 2)
    else:
        word = rec.view("<u8").astype(np.uint64)
        pos = (word >> (32 * (_LANE & 1) + 4 * (_LANE >> 1))) & 15
    return pos.astype(np.uint8)
