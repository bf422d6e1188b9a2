"""CPU emulation of the CUDA 2:4 kernels at the level of warp registers.

It re-derives, from the PTX ISA's fragment layouts (written out again here, independently of
the packer), what each thread of a warp holds and how `mma.sp.m16n8k32` picks the A operand
through the metadata and the sparsity selector; then it replays the kernels' loop: which
lane loads which packed words for which K tile and with which selector. If the packer put a
value or a metadata bit in the wrong register, the emulated product differs from the dense
one, so a packing bug is caught on a machine without a GPU.

Layouts used (PTX ISA, warp-level mma.sp, f16/bf16, m16n8k32; g = lane>>2, t = lane%4):
- A (16x32 logical, 16x16 compressed), 4 x .b32: register r, half h ->
  row g + 8*(r & 1), compressed column 2t + h + 8*(r >> 1).
- B (32x8), 4 x .b32: register r, half h -> row (k) 2t + h + 8r, column (n) g.
- C/D (16x8 fp32), 4 x .f32: element i -> row g + 8*(i >> 1), column 2t + (i & 1).
- Metadata: in each quad, lanes 2*selector and 2*selector+1 supply it; lane 2*selector+c
  describes logical columns 16c..16c+15: bits 0-15 of row g, bits 16-31 of row g+8, 4 bits
  per chunk of 4 columns, the first kept element's index in the chunk's low 2 bits.
"""

from __future__ import annotations

import numpy as np

from .errors import PackedFormatError
from .packing_sparse_tc import TILE_K, TILE_M, PackedSparseTC, bits_to_float, float_to_bits


def _halves(regs: np.ndarray, dtype: str) -> np.ndarray:
    """[..., 32, 4] uint32 registers -> [..., 32, 4, 2] float32 (low half first)."""
    lo, hi = regs & 0xFFFF, regs >> 16
    return bits_to_float(np.stack([lo, hi], axis=-1).astype(np.uint16), dtype)


def mma_sp_m16n8k32(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, e: np.ndarray, selector: int, dtype: str
) -> np.ndarray:
    """D = A_sparse @ B + C for a batch of warps.

    a, b: uint32 [..., 32, 4]; c: float32 [..., 32, 4]; e: uint32 [..., 32]; returns D like c.
    Raises PackedFormatError on metadata the ordered form rejects (non-increasing positions).
    """
    if selector not in (0, 1):
        raise ValueError("the sparsity selector of m16n8k32 f16/bf16 is 0 or 1")
    lead = a.shape[:-2]
    av, bv = _halves(a, dtype), _halves(b, dtype)
    g, t = np.arange(32) // 4, np.arange(32) % 4

    comp = np.zeros((*lead, TILE_M, 16), dtype=np.float32)  # compressed A, gathered per thread
    for r in range(4):
        for h in range(2):
            comp[..., g + 8 * (r & 1), 2 * t + h + 8 * (r >> 1)] = av[..., :, r, h]

    bmat = np.zeros((*lead, TILE_K, 8), dtype=np.float32)
    for r in range(4):
        for h in range(2):
            bmat[..., 2 * t + h + 8 * r, g] = bv[..., :, r, h]

    # Expand A through the metadata: compressed column cc sits in chunk cc//2, slot cc%2.
    dense = np.zeros((*lead, TILE_M, TILE_K), dtype=np.float32)
    for row in range(TILE_M):
        grp, upper = row % 8, row >= 8
        for cc in range(16):
            chunk, slot = cc // 2, cc % 2
            lane = 4 * grp + 2 * selector + chunk // 4
            word = e[..., lane].astype(np.uint64)
            shift = 16 * upper + 4 * (chunk % 4)
            first = (word >> shift) & 3
            second = (word >> (shift + 2)) & 3
            if np.any(second <= first):
                raise PackedFormatError(
                    f"metadata of row {row}, chunk {chunk}: positions not strictly increasing"
                )
            pos = first if slot == 0 else second
            col = (4 * chunk + pos).astype(np.intp)
            np.put_along_axis(dense[..., row, :], col[..., None], comp[..., row, cc, None], -1)

    d = dense.astype(np.float64) @ bmat.astype(np.float64)  # exact products, fp64 sums
    out = c.astype(np.float64).copy()
    for i in range(4):
        out[..., :, i] += d[..., g + 8 * (i >> 1), 2 * t + (i & 1)]
    return out.astype(np.float32)


def _b_registers(x_bits: np.ndarray, k0: int) -> np.ndarray:
    """B-fragment registers for X rows [..., 8, K] (uint16) at K tile offset k0 -> [..., 32, 4]."""
    g, t = np.arange(32) // 4, np.arange(32) % 4
    regs = np.zeros((*x_bits.shape[:-2], 32, 4), dtype=np.uint32)
    for r in range(4):
        k = k0 + 2 * t + 8 * r
        lo = x_bits[..., g, k].astype(np.uint32)
        hi = x_bits[..., g, k + 1].astype(np.uint32)
        regs[..., r] = lo | (hi << 16)
    return regs


def emulate_matmul(packed: PackedSparseTC, x: np.ndarray) -> np.ndarray:
    """Y[batch, C] = X[batch, K] @ W as the CUDA kernels compute it (fp32 accumulate).

    X is rounded to the packing's dtype, exactly as the kernels' fp16/bf16 input would be.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != packed.k:
        raise PackedFormatError(f"expected X of shape [batch, {packed.k}], got {x.shape}")
    batch = x.shape[0]
    nt = -(-batch // 8)
    xb = np.zeros((nt * 8, packed.k), dtype=np.uint16)
    xb[:batch] = float_to_bits(x, packed.dtype)
    xb = xb.reshape(nt, 8, packed.k)
    mt = packed.row_tiles
    # Every (row tile, batch tile) warp runs the same K loop; vectorize over both.
    acc = np.zeros((mt, nt, 32, 4), dtype=np.float32)
    for kt in range(packed.k_tiles):
        a = np.broadcast_to(packed.values[:, kt, None], (mt, nt, 32, 4))
        e = np.broadcast_to(packed.meta[:, kt // 2, None], (mt, nt, 32))
        b = np.broadcast_to(_b_registers(xb, kt * TILE_K)[None], (mt, nt, 32, 4))
        acc = mma_sp_m16n8k32(a, b, acc, e, kt & 1, packed.dtype)
    # Scatter D fragments: element i of lane -> (row g + 8*(i>>1), column 2t + (i&1)).
    g, t = np.arange(32) // 4, np.arange(32) % 4
    y = np.zeros((mt, TILE_M, nt, 8), dtype=np.float32)
    for i in range(4):
        y[:, g + 8 * (i >> 1), :, 2 * t + (i & 1)] = acc[..., i].transpose(2, 0, 1)
    return y.reshape(mt * TILE_M, nt * 8)[: packed.cols, :batch].T.copy()
