"""Fused block-sparse attention (the C kernel of com.sparsec.SparseAttention), from numpy.

`block_sparse_attention(q, k, v, ...)` calls `sk_attention` on contiguous float32 arrays;
the ONNX Runtime custom op calls the same C function on ORT's buffers.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ._native import load
from .errors import KernelUnavailableError
from .isa import default_threads, resolve_isa

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_i64p = ctypes.POINTER(ctypes.c_int64)
_i64 = ctypes.c_int64
_int = ctypes.c_int


def _fn() -> ctypes._CFuncPtr:
    lib = load()
    if not hasattr(lib, "sk_attention"):
        raise KernelUnavailableError("the sparsec kernel library has no attention kernel (stale build): re-run `pip install -e .`")
    f = lib.sk_attention
    f.argtypes = [_f32p, _f32p, _f32p, _f32p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, ctypes.c_float, _int,
                  _i64, _i64, _i32p, _i32p, _i32p, _i32p, _int, _u8p, _i64, _i64, _f32p, _i64p, _int, _int]
    f.restype = _int
    return f


def _ptr(a: np.ndarray | None, t):
    return None if a is None else a.ctypes.data_as(t)


def block_sparse_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float, block: int, causal: bool,
    local_blocks: list[int] | None = None, sink_blocks: list[int] | None = None,
    block_mask: np.ndarray | None = None, topk_blocks: list[int] | None = None,
    summary_blocks: list[int] | None = None, topk_score: int = 0, bias: np.ndarray | None = None, isa: str | None = None, threads: int | None = None,
) -> np.ndarray:
    """Y [B, Hq, Sq, Dv] (the semantics of com.sparsec.SparseAttention, `topk_blocks` and
    `summary_blocks` included)."""
    q, k, v = (np.ascontiguousarray(x, dtype=np.float32) for x in (q, k, v))
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q, k, v must be 4-D [batch, heads, seq, dim]")
    b, hq, sq, d = q.shape
    hkv, sk, dv = k.shape[1], k.shape[2], v.shape[3]
    if k.shape != (b, hkv, sk, d) or v.shape[:3] != (b, hkv, sk):
        raise ValueError(f"shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}")
    mask = local = sinks = None
    mq = mk = 0
    tk = list(topk_blocks or [0])
    sm = list(summary_blocks or [0])
    if block_mask is not None:
        # One layout-head count for the mask and top-k: a 1-head mask is repeated per head.
        heads = max(block_mask.shape[0], len(tk), len(sm))
        mask = np.ascontiguousarray(np.broadcast_to(block_mask, (heads, *block_mask.shape[1:])), dtype=np.uint8)
        mq, mk = mask.shape[1:]
    else:
        lb = list(local_blocks or [-1])
        sb = list(sink_blocks or [0])
        heads = max(len(lb), len(sb), len(tk), len(sm))
        local = np.ascontiguousarray(np.broadcast_to(np.array(lb, np.int32), (heads,)))
        sinks = np.ascontiguousarray(np.broadcast_to(np.array(sb, np.int32), (heads,)))
    # No top-k array at all when every value is 0: the kernel's static path.
    topk = np.ascontiguousarray(np.broadcast_to(np.array(tk, np.int32), (heads,))) if any(tk) else None
    summary = np.ascontiguousarray(np.broadcast_to(np.array(sm, np.int32), (heads,))) if any(sm) else None
    strides = None
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
        full = np.broadcast_to(bias.reshape((1,) * (4 - bias.ndim) + bias.shape), (b, hq, sq, sk))
        strides = np.array([s // 4 for s in full.strides], np.int64)
        bias = full  # a view: broadcast dims have stride 0, the C side reads through strides
    y = np.empty((b, hq, sq, dv), np.float32)
    rc = _fn()(
        _ptr(q, _f32p), _ptr(k, _f32p), _ptr(v, _f32p), _ptr(y, _f32p), b, hq, hkv, sq, sk, d, dv,
        float(scale), int(causal), int(block), heads, _ptr(local, _i32p), _ptr(sinks, _i32p), _ptr(topk, _i32p),
        _ptr(summary, _i32p), int(topk_score),
        _ptr(mask, _u8p), mq, mk, None if bias is None else bias.ctypes.data_as(_f32p), _ptr(strides, _i64p),
        resolve_isa(isa), threads if threads is not None else default_threads(),
    )
    if rc != 0:
        raise ValueError(f"sk_attention: {load().sk_status_string(rc).decode()}")
    return y
