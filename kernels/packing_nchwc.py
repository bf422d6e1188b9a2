"""Offline packer for the NCHWc sparse convolution (`nchwc_conv`, src/nchwc_conv_avx512.c).

ONNX Runtime's NCHWc layout puts 16 channels of one position in a vector. The kernel keeps 16
output channels in the lanes; for every block (output block, tap, input block) it stores pairs
of vectors: lane l of pair j is the j-th kept input channel of output channel 16*ob+l among the
block's 16 input channels (an index 0..15) and its weight. A block has as many pairs as its
fullest lane keeps (2:4 and 4:8: 8; 1:4: 4; 1:8: 2; unstructured 80%: ~6 on average, none
where all 16 lanes are zero); lanes keeping fewer are padded with weight 0. ``offs`` gives
each block's pair range, ``k`` the most pairs of any block.

Indices are int32 (a byte index cost a widening on the shuffle port, 5-10% of the kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._buffers import aligned_copy
from .errors import PackedFormatError

BLOCK = 16


def padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


@dataclass(frozen=True, eq=False)
class PackedNchwc:
    """A conv weight packed for ``nchwc_conv``. Build with ``pack_nchwc``."""

    cout: int
    cin: int
    kh: int
    kw: int
    k: int  # the most pairs of any block
    offs: np.ndarray  # int32 [ob * kh * kw * ib + 1]: block i's pairs are offs[i]..offs[i + 1]
    idx: np.ndarray  # int32 [pairs, 16]
    vals: np.ndarray  # float32, same shape

    @property
    def ob(self) -> int:
        return padded(self.cout) // BLOCK

    @property
    def ib(self) -> int:
        return padded(self.cin) // BLOCK

    @property
    def pairs(self) -> int:
        return int(self.offs[-1])

    @property
    def kept_fraction(self) -> float:
        """Multiply-adds the kernel runs per dense one (padding pairs count)."""
        return self.pairs / (BLOCK * self.ob * self.kh * self.kw * self.ib)


def pack_nchwc(w: np.ndarray) -> PackedNchwc:
    """Pack a [Cout, Cin, KH, KW] weight (zeros are pruned weights; channels padded to 16)."""
    if w.ndim != 4 or min(w.shape) < 1:
        raise PackedFormatError(f"pack_nchwc: expected a [Cout, Cin, KH, KW] weight, got shape {w.shape}")
    co, ci, kh, kw = w.shape
    full = np.zeros((padded(co), padded(ci), kh, kw), np.float32)
    full[:co, :ci] = w
    ob, ib = full.shape[0] // BLOCK, full.shape[1] // BLOCK
    t = full.reshape(ob, BLOCK, ib, BLOCK, kh, kw).transpose(0, 4, 5, 2, 1, 3)  # [ob, kh, kw, ib, lane, c]
    kept = t != 0
    per_block = kept.sum(-1).max(-1).reshape(-1)  # pairs of each block: its fullest lane
    k = max(1, int(per_block.max()))
    # Kept channels first, in ascending order (a stable sort of "not kept"), then padding.
    order = np.argsort(~kept, axis=-1, kind="stable")[..., :k]
    vals = np.take_along_axis(t, order, -1).reshape(-1, BLOCK, k).swapaxes(1, 2)  # [block, pair, lane]
    idx = order.astype(np.int32).reshape(-1, BLOCK, k).swapaxes(1, 2)
    used = np.arange(k)[None, :] < per_block[:, None]
    offs = np.concatenate([[0], np.cumsum(per_block)]).astype(np.int32)
    return PackedNchwc(co, ci, kh, kw, k, aligned_copy(offs, np.int32), aligned_copy(idx[used], np.int32),
                       aligned_copy(vals[used], np.float32))


def to_nchwc(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, C/16, H, W, 16] (channels zero-padded to 16)."""
    n, c, h, w = x.shape
    out = np.zeros((n, padded(c), h, w), np.float32)
    out[:, :c] = x
    return np.ascontiguousarray(out.reshape(n, -1, BLOCK, h, w).transpose(0, 1, 3, 4, 2))


def from_nchwc(x: np.ndarray, c: int) -> np.ndarray:
    """[N, C/16, H, W, 16] -> [N, C, H, W] (the first c channels)."""
    n, cb, h, w, _ = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * BLOCK, h, w)[:, :c])
