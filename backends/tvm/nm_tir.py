"""The N:M sparse matmul as a scheduled TIR PrimFunc over sparsec's packed N:M buffers.

An alternative to the C kernel called as a packed function (`sparsec_nm_matmul`): the same
buffers (kernels/packing_nm.py, layout in kernels/src/sk.h: tiles of 16 output columns,
records (group, slot) of 16 values and 16 log2(M)-bit positions) read by TVM-generated code,

    y[r, t*16 + lane] = sum_{g, j} vals[t, g, j, lane] * x[r, g*M + pos(t, g, j, lane)]

scheduled explicitly: parallel over tiles, the 16 lanes vectorized, a register accumulator
per (row, tile). Only M=4 (one uint32 of 16 2-bit positions per record) and C a multiple of
16 are expressed; `supports` says which, the importer keeps the packed call for the rest.
bench/tvm_bench.py --mode tir measures it against the packed C kernel.
"""

from __future__ import annotations

from typing import Any

from sparsec.kernels.packing_nm import META_WORDS, TILE

TIR_M = 4  # 2-bit positions: lane l's position is bits 2*(l%8).. of uint16 word l//8


def supports(n: int, m: int, cols: int) -> bool:
    return m == TIR_M and 1 <= n <= m and cols % TILE == 0


def nm_matmul_primfunc(rows: Any, k: int, cols: int, n: int, m: int = TIR_M) -> Any:
    """Scheduled PrimFunc (x [rows, k] f32, values f32, meta u16) -> y [rows, cols] f32.
    `rows` is an int or a tirx.Var (a symbolic batch)."""
    from tvm import s_tir, te, tirx

    if not supports(n, m, cols) or k % m:
        raise ValueError(f"TIR N:M matmul needs M={TIR_M}, K % M == 0 and C % {TILE} == 0 (got n={n}, m={m}, K={k}, C={cols})")
    tiles, groups = cols // TILE, k // m
    words = META_WORDS[m]
    x = te.placeholder((rows, k), "float32", name="x")
    vals = te.placeholder((tiles * groups * n * TILE,), "float32", name="values")
    meta = te.placeholder((tiles * groups * n * words,), "uint16", name="meta")
    g = te.reduce_axis((0, groups), name="g")
    j = te.reduce_axis((0, n), name="j")

    def body(r: Any, c: Any) -> Any:
        t, lane = c // TILE, c % TILE
        rec = (t * groups + g) * n + j
        word = meta[rec * words + lane // 8].astype("int32")
        pos = (word >> ((lane % 8) * 2)) & 3
        # x[r, g*M + pos] as a select over the group's M inputs (broadcast scalars): vectorizes
        # to compares and blends, where an indexed load becomes a per-lane gather.
        xg = x[r, g * m + m - 1]
        for i in range(m - 2, -1, -1):
            xg = tirx.Select(pos == i, x[r, g * m + i], xg)
        return te.sum(vals[rec * TILE + lane] * xg, axis=[g, j])

    y = te.compute((rows, cols), body, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, vals, meta, y]))
    block = sch.get_sblock("y")
    r_loop, c_loop, g_loop, j_loop = sch.get_loops(block)
    t_loop, lane = sch.split(c_loop, factors=[None, TILE])
    sch.reorder(t_loop, r_loop, g_loop, j_loop, lane)
    sch.parallel(t_loop)
    # Accumulate the tile's 16 outputs in a local buffer (registers), store once per row.
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, r_loop)
    sch.vectorize(lane)  # before decompose_reduction: vectorize needs the block's init
    sch.unroll(j_loop)
    init = sch.decompose_reduction(block, g_loop)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
