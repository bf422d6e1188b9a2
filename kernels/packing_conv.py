"""Offline packer for sparse convolution weights (`conv2d`, src/conv_internal.h).

A [Cout, Cin, KH, KW] weight becomes, per output channel, the list of its kept weights with
their flat tap index ``ci*KH*KW + kh*KW + kw``. Output channels run in lockstep pairs (the
AVX-512 kernel keeps 2 channels x 64 positions in registers): the shorter row of a pair is
padded with zero weights. Channels are sorted by their count first, so unstructured
sparsity pairs rows of near-equal length (little padding); N:M rows are all equally long
and need none. Any sparsity fits the format (N:M, unstructured, blocks); the kernel's cost is
one FMA per kept weight and 16 positions.

Input channels are cut into chunks of ``kc`` (the kernel keeps a block of 64 positions of one
chunk's input rows in L1 while every row pair walks its taps in that chunk, then moves on):
steps are stored chunk by chunk, ``row_ptr[c * groups + g]`` starting pair g's steps in chunk c.
Each load feeds one FMA, so the kernel runs at L1 load speed only if that block stays in L1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._buffers import aligned_copy
from .errors import PackedFormatError

G = 2  # output channels per lockstep pair (SK_CONV_G)
INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class PackedConv:
    """A sparse conv weight packed for ``conv2d``. Build with ``pack_conv`` or ``from_arrays``."""

    cout: int
    cin: int
    kh: int
    kw: int
    kc: int  # input channels per chunk
    perm: np.ndarray  # int32 (groups * G,): output channel of each packed row, -1 = padding
    row_ptr: np.ndarray  # int32 (chunks * groups + 1,): first step of each (chunk, pair)
    taps: np.ndarray  # int32 (steps * G,)
    values: np.ndarray  # float32 (steps * G,)
    _offsets: dict = field(default_factory=dict, repr=False)  # per input geometry, see offsets()

    @property
    def groups(self) -> int:
        return -(-self.cout // G)

    @property
    def chunks(self) -> int:
        return -(-self.cin // self.kc)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.values))

    @property
    def slots(self) -> int:
        return int(self.values.size)

    @classmethod
    def from_arrays(cls, cout: int, cin: int, kh: int, kw: int, kc: int, perm: np.ndarray,
                    row_ptr: np.ndarray, taps: np.ndarray, values: np.ndarray) -> PackedConv:
        """Validate externally supplied buffers (ONNX initializers)."""
        _check_dims(cout, cin, kh, kw)
        if kc < 1:
            raise PackedFormatError(f"kc must be positive, got {kc}")
        perm, row_ptr, taps, values = (np.asarray(a) for a in (perm, row_ptr, taps, values))
        if perm.dtype != np.int32 or row_ptr.dtype != np.int32 or taps.dtype != np.int32:
            raise PackedFormatError("perm, row_ptr and taps must be int32")
        if values.dtype != np.float32:
            raise PackedFormatError("values must be float32")
        groups, chunks = -(-cout // G), -(-cin // kc)
        if perm.size != groups * G or row_ptr.size != chunks * groups + 1:
            raise PackedFormatError(
                f"perm/row_ptr have {perm.size}/{row_ptr.size} entries, expected {groups * G}/{chunks * groups + 1}"
            )
        if row_ptr[0] != 0 or np.any(np.diff(row_ptr) < 0) or int(row_ptr[-1]) * G != values.size:
            raise PackedFormatError("row_ptr must rise from 0 to the number of steps")
        if taps.size != values.size:
            raise PackedFormatError(f"taps has {taps.size} entries, values {values.size}")
        if taps.size and (taps.min() < 0 or taps.max() >= cin * kh * kw):
            raise PackedFormatError(f"tap index out of range [0, {cin * kh * kw})")
        chunk_of_step = np.repeat(np.arange(chunks * groups) // groups, np.diff(row_ptr))
        if taps.size and np.any(taps.reshape(-1, G) // (kh * kw * kc) != chunk_of_step[:, None]):
            raise PackedFormatError("a tap lies outside its input-channel chunk")
        real = np.sort(perm[perm >= 0])
        if real.size != cout or np.any(real != np.arange(cout)) or np.any(perm < -1):
            raise PackedFormatError("perm must hold every output channel exactly once (and -1 for padding)")
        return cls(cout, cin, kh, kw, kc, aligned_copy(perm, np.int32), aligned_copy(row_ptr, np.int32),
                   aligned_copy(taps, np.int32), aligned_copy(values, np.float32))

    def to_dense(self) -> np.ndarray:
        """The [Cout, Cin, KH, KW] weight this packing represents."""
        dense = np.zeros((self.cout, self.cin * self.kh * self.kw), dtype=np.float32)
        steps = np.diff(self.row_ptr)
        step_group = np.repeat(np.arange(self.row_ptr.size - 1) % self.groups, steps)
        rows = self.perm.reshape(-1, G)[step_group]  # [steps, G]
        taps, vals = self.taps.reshape(-1, G), self.values.reshape(-1, G)
        keep = (rows >= 0) & (vals != 0)
        np.add.at(dense, (rows[keep], taps[keep]), vals[keep])
        return dense.reshape(self.cout, self.cin, self.kh, self.kw)


def _check_dims(cout: int, cin: int, kh: int, kw: int) -> None:
    if min(cout, cin, kh, kw) < 1 or kh > 64 or kw > 64:
        raise PackedFormatError(f"bad conv weight shape [{cout}, {cin}, {kh}, {kw}]")
    if cin * kh * kw > INT32_MAX or cout > INT32_MAX:
        raise PackedFormatError("conv weight too large for int32 tap indices")


def default_kc(kh: int, kw: int, stride: int = 1) -> int:
    """Input channels per chunk: a 64-position block of a chunk's input rows in ~16-24 KB of L1
    (1x1: 256 B a channel; k x k reads ~3 grid rows a channel, strided ones 4 phase planes)."""
    if kh * kw == 1:
        return 64
    return 32 if stride == 1 else 16


def pack_conv(w: np.ndarray, kc: int | None = None) -> PackedConv:
    """Pack the nonzeros of a [Cout, Cin, KH, KW] (or [Cout, Cin]) weight; lossless for any w.
    ``kc``: input channels per chunk (default ``default_kc``; a multiple of M keeps N:M rows
    equally long in every chunk)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 2:
        w = w[:, :, None, None]
    if w.ndim != 4:
        raise PackedFormatError(f"expected a [Cout, Cin, KH, KW] weight, got shape {w.shape}")
    cout, cin, kh, kw = w.shape
    _check_dims(cout, cin, kh, kw)
    kc = default_kc(kh, kw) if kc is None else int(kc)
    if kc < 1:
        raise PackedFormatError(f"kc must be positive, got {kc}")
    groups, chunks, kk = -(-cout // G), -(-cin // kc), kh * kw
    flat = w.reshape(cout, cin * kk)
    nz = flat != 0
    counts = nz.sum(axis=1)
    order = np.argsort(-counts, kind="stable")  # longest rows first, pairs of similar length
    perm = np.full(groups * G, -1, dtype=np.int32)
    perm[:cout] = order
    # Kept weights of every (packed row, chunk): [rows, chunks]
    padded_nz = np.zeros((groups * G, chunks * kc * kk), dtype=bool)
    padded_nz[:cout, : cin * kk] = nz[order]
    per_chunk = padded_nz.reshape(groups * G, chunks, kc * kk).sum(axis=2)
    steps = per_chunk.reshape(groups, G, chunks).max(axis=1).T.reshape(-1)  # (chunk, group) order
    row_ptr = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    if row_ptr[-1] * G > INT32_MAX:
        raise PackedFormatError("too many kept weights for int32 indices")
    taps = np.zeros((int(row_ptr[-1]), G), dtype=np.int32)
    vals = np.zeros((int(row_ptr[-1]), G), dtype=np.float32)
    span = kc * kk
    for r in range(cout):
        g, j = divmod(r, G)  # packed row r holds channel order[r]
        idx = np.flatnonzero(nz[order[r]])
        bounds = np.searchsorted(idx, np.arange(chunks + 1) * span)
        for c in range(chunks):
            sel = idx[bounds[c] : bounds[c + 1]]
            s0, s1 = int(row_ptr[c * groups + g]), int(row_ptr[c * groups + g + 1])
            taps[s0 : s0 + sel.size, j] = sel
            vals[s0 : s0 + sel.size, j] = flat[order[r], sel]
            # Padding steps repeat a tap of this chunk (a cached input row) with weight 0.
            taps[s0 + sel.size : s1, j] = sel[-1] if sel.size else c * span
    # Padding rows (odd Cout) point into their chunk too.
    for pr in range(cout, groups * G):
        g, j = divmod(pr, G)
        for c in range(chunks):
            taps[int(row_ptr[c * groups + g]) : int(row_ptr[c * groups + g + 1]), j] = c * span
    return PackedConv(cout, cin, kh, kw, kc, aligned_copy(perm, np.int32), aligned_copy(row_ptr, np.int32),
                      aligned_copy(taps.reshape(-1), np.int32), aligned_copy(vals.reshape(-1), np.float32))
