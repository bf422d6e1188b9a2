"""Dense CPU schedules for the TIR that Relax's `LegalizeOps` produces (TVM schedules nothing
by default: unscheduled TIR is one serial scalar loop nest, ~100x slower than ONNX Runtime).

Rules, first match wins per PrimFunc (dlight's `ApplyDefaultSchedule`):
1. dlight's CPU `GEMV` (inner reduction, weight [N, K]; not where it vectorizes around the
   reduction, see `gemv_rule`) and `Reduction` (softmax/norm rows),
   the latter only where its parallel loop runs over the rows (`RowReduction` below: with
   unit leading axes, as in a batch-1 decode step, it parallelizes the normalized axis and
   recomputes the row's mean and variance per element, 2.3 ms per 768-wide LayerNorm);
2. `LoopNestCPU` below, an explicit schedule for every other loop nest, block by block:
   - reduction blocks (matmul, batch matmul, conv): the last spatial axis is split into
     `vector` lanes x `unroll` vectors, the one before it into `rows` register rows; loops
     run (parallel outer spatial, reduction, rows, unroll, lanes) so one weight vector
     feeds `rows` accumulators and each output tile stays in registers across the
     reduction (one-row matmuls, the decode case: `GEMV_VECTORS` vectors, so each thread
     streams 1 KB weight row segments); loops are parallelized and vectorized, then the
     init is split off (`decompose_reduction`) and vectorized as well;
   - spatial blocks (elementwise, transpose, pad, concat): all loops fused, split into a
     parallel outer loop and a vectorized inner loop;
   - blocks that write bool buffers (masks) stay scalar: LLVM codegen rejects vector bool
     stores.
Loops run in parallel only over nests of at least `MIN_PARALLEL_WORK` iterations: waking
TVM's thread pool costs microseconds, more than a whole batch-1 elementwise op or LayerNorm
(a decode step has hundreds of them). Every step is tried and skipped when TIR refuses it
(non-divisible extents, opaque blocks), so a nest always keeps a valid, if slower, schedule.
Extents are static (shapes are fixed at compile time), which makes these fixed tiles safe.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("sparsec.backends.tvm")

VECTOR_LANES = 16  # fp32 lanes of one AVX-512 register (2 AVX2/NEON registers)
UNROLL_VECTORS = 4  # vectors per output row of a register tile
GEMV_VECTORS = 16  # vectors per output tile of a one-row matmul (1 KB weight row segments)
REGISTER_ROWS = 4  # output rows per register tile
MIN_PARALLEL = 2  # outer loops shorter than this run serially
MIN_PARALLEL_WORK = 1 << 16  # loop nests with fewer innermost iterations run serially


def _extent(sch: Any, loop: Any) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if hasattr(ext, "value") or isinstance(ext, int) else None


def _work(sch: Any, block: Any) -> int:
    """Iterations of `block`'s innermost body (product of its static loop extents)."""
    total = 1
    for loop in sch.get_loops(block):
        total *= _extent(sch, loop) or 1
    return total


def _largest_divisor(extent: int, limit: int) -> int:
    for f in range(min(limit, extent), 0, -1):
        if extent % f == 0:
            return f
    return 1


def _try(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except Exception:  # a schedule primitive TIR refuses here: keep the nest as it is
        return None


def _writes_bool(sch: Any, block: Any) -> bool:
    """Whether `block` stores into a bool buffer: LLVM codegen cannot vectorize those stores
    (the vector value is int8xN, the buffer bool: "dtype mismatch on BufferStore"), as in the
    attention masks of Hugging Face exports. Such nests keep scalar inner loops."""
    return any(str(region.source.dtype) == "bool" for region in sch.get(block).writes)  # source: the buffer


def _schedule_spatial(sch: Any, block: Any) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    parallel = _work(sch, block) >= MIN_PARALLEL_WORK
    if _writes_bool(sch, block):
        if parallel:
            _try(sch.parallel, loops[0])
        return
    fused = loops[0] if len(loops) == 1 else _try(sch.fuse, *loops)
    if fused is None:
        if parallel:
            _try(sch.parallel, loops[0])
        return
    ext = _extent(sch, fused)
    if ext is None:
        return
    lanes = _largest_divisor(ext, VECTOR_LANES)
    if lanes > 1 and ext // lanes >= 1:
        outer, inner = sch.split(fused, factors=[None, lanes])
        if parallel and ext // lanes >= MIN_PARALLEL:
            _try(sch.parallel, outer)
        _try(sch.vectorize, inner)
    elif parallel and ext >= MIN_PARALLEL:
        _try(sch.parallel, fused)


def _schedule_reduction(sch: Any, block: Any) -> None:
    from tvm.tirx import IterVar

    loops = sch.get_loops(block)
    iter_vars = sch.get(block).iter_vars
    if len(loops) != len(iter_vars):
        return  # loops and block iterators not one to one (already transformed): leave it
    spatial = [lp for lp, iv in zip(loops, iter_vars, strict=True) if iv.iter_type == IterVar.DataPar]
    reduce = [lp for lp, iv in zip(loops, iter_vars, strict=True) if iv.iter_type == IterVar.CommReduce]
    if not spatial or not reduce or len(spatial) + len(reduce) != len(loops) or _writes_bool(sch, block):
        return
    parallel = _work(sch, block) >= MIN_PARALLEL_WORK
    last = spatial[-1]
    ext = _extent(sch, last) or 1
    lanes = _largest_divisor(ext, VECTOR_LANES)
    rows_total = 1
    for lp in spatial[:-1]:
        rows_total *= _extent(sch, lp) or 1
    vecs = _largest_divisor(ext // lanes, GEMV_VECTORS if rows_total == 1 else UNROLL_VECTORS)
    j_outer, j_unroll, j_lanes = sch.split(last, factors=[None, vecs, lanes])
    row_tile: list[Any] = []
    outer = spatial[:-1]
    if outer:
        rows_ext = _extent(sch, outer[-1]) or 1
        rows = _largest_divisor(rows_ext, REGISTER_ROWS)
        if rows > 1:
            r_outer, r_inner = sch.split(outer[-1], factors=[None, rows])
            outer = [*outer[:-1], r_outer]
            row_tile = [r_inner]
    sch.reorder(*outer, j_outer, *reduce, *row_tile, j_unroll, j_lanes)
    par = [*outer, j_outer]
    fused = par[0] if len(par) == 1 else _try(sch.fuse, *par)
    # Loop kinds first: once the init is split off, the update block is no longer a
    # reduction block with an init and TIR refuses to parallelize or vectorize its loops.
    if parallel and fused is not None and (_extent(sch, fused) or 0) >= MIN_PARALLEL:
        _try(sch.parallel, fused)
    for lp in [*row_tile, j_unroll]:
        _try(sch.unroll, lp)
    _try(sch.vectorize, j_lanes)
    init = _try(sch.decompose_reduction, block, reduce[0])
    if init is not None:
        init_loops = sch.get_loops(init)
        if init_loops:
            _try(sch.vectorize, init_loops[-1])


def loop_nest_rule() -> Any:
    """The `LoopNestCPU` schedule rule (a dlight ScheduleRule instance)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.base import ScheduleRule
    from tvm.tirx import PrimFunc

    class LoopNestCPU(ScheduleRule):
        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            if not isinstance(func, PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            root = sch.get_sblock("root") if _has_root(sch) else None
            blocks = sch.get_child_blocks(root) if root is not None else []
            for block in blocks:
                if _is_reduction(sch, block):
                    _schedule_reduction(sch, block)
                else:
                    _schedule_spatial(sch, block)
            return sch

    return LoopNestCPU()


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def _is_reduction(sch: Any, block: Any) -> bool:
    from tvm.tirx import IterVar

    return any(iv.iter_type == IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _guarded(rule: Any) -> Any:
    """`rule`, declining (None) where it raises: dlight's CPU rules assert on some shapes
    (GPT-2's batch-1 decode step), and a failing rule must fall through to the next."""
    from tvm.s_tir.dlight.base import ScheduleRule

    class Guarded(ScheduleRule):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            try:
                return rule.apply(func, target, tunable)
            except Exception as e:
                log.debug("schedule rule %s declined: %s", type(rule).__name__, e)
                return None

    return Guarded()


def row_reduction_rule() -> Any:
    """dlight's CPU `Reduction`, declined where its parallel loop is not the row loop.

    It parallelizes the leading spatial loops of the last (injective) block and computes
    the reductions under them. That is right for row patterns (softmax, norms: a few row
    statistics broadcast over each row) and wrong in two cases it also matches: with unit
    leading axes the loop it finds is the normalized axis itself (each element recomputes
    its row's mean and variance), and a matmul with a fused epilogue becomes one scalar dot
    product per output element, reading the weight column-wise (2 ms for a 256x1024 GEMV).
    Accepted only when every reduction block has fewer rows (product of its spatial extents)
    than the last block has elements, sits under a loop of exactly that many iterations, and
    the nest is big enough to run in parallel.
    """
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.base import ScheduleRule
    from tvm.tirx import IterVar

    reduction = dl.cpu.Reduction()

    class RowReduction(ScheduleRule):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            sch = reduction.apply(func, target, tunable)
            if sch is None or isinstance(sch, list):
                return None
            root = sch.get_sblock("root") if _has_root(sch) else None
            blocks = sch.get_child_blocks(root) if root is not None else []
            if not blocks:
                return None
            elements = _spatial_size(sch, blocks[-1])
            work = 0
            for block in _all_blocks(sch, blocks):
                ivs = sch.get(block).iter_vars
                if not any(iv.iter_type == IterVar.CommReduce for iv in ivs):
                    continue
                rows = _spatial_size(sch, block)
                loops = sch.get_loops(block)
                if not loops or rows >= elements or _extent(sch, loops[0]) != rows:
                    return None
                work += _work(sch, block)
            return sch if work >= MIN_PARALLEL_WORK else None

    return RowReduction()


def _spatial_size(sch: Any, block: Any) -> int:
    """Product of `block`'s spatial iterator extents (0 when one is not static)."""
    from tvm.tirx import IterVar

    size = 1
    for iv in sch.get(block).iter_vars:
        if iv.iter_type == IterVar.DataPar:
            size *= int(iv.dom.extent) if hasattr(iv.dom.extent, "value") else 0
    return size


def _all_blocks(sch: Any, blocks: list[Any]) -> list[Any]:
    """`blocks` and the blocks nested under their loops (compute_at moves blocks there)."""
    out: list[Any] = []
    todo = list(blocks)
    while todo:
        block = todo.pop()
        out.append(block)
        todo.extend(sch.get_child_blocks(block))
    return out


def gemv_rule() -> Any:
    """dlight's CPU `GEMV`, declined where it vectorizes a loop that encloses the reduction.

    On small batch-1 GEMVs (a 1x1 conv 96 -> 384 in mobilenet's squeeze-excite block) it
    vectorizes 128 outputs around the whole unrolled reduction, and LLVM did not finish
    compiling that function in minutes; LoopNestCPU's nest compiles in milliseconds.
    """
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.base import ScheduleRule
    from tvm.tirx import ForKind

    gemv = dl.cpu.GEMV()

    class SafeGEMV(ScheduleRule):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            sch = gemv.apply(func, target, tunable)
            if sch is None or isinstance(sch, list):
                return None
            root = sch.get_sblock("root") if _has_root(sch) else None
            for block in sch.get_child_blocks(root) if root is not None else []:
                loops = sch.get_loops(block)
                if any(sch.get(lp).kind == ForKind.VECTORIZED for lp in loops[:-1]):
                    return None
            return sch

    return SafeGEMV()


def schedule_pass() -> Any:
    """The module pass applying GEMV, RowReduction (dlight CPU rules) and LoopNestCPU."""
    from tvm.s_tir import dlight as dl

    # Only dlight's rules are guarded: LoopNestCPU skips each step TIR refuses by itself, so an
    # exception from it is a bug, and guarding it would leave nests silently unscheduled.
    return dl.ApplyDefaultSchedule(_guarded(gemv_rule()), _guarded(row_reduction_rule()), loop_nest_rule())
