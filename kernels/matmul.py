"""Python entry points of the compiled kernels: y = x @ W for packed sparse W.

x may have any leading dimensions and any strides; it is made row-contiguous along K only
when needed (the kernels take a row stride). The C side re-checks every buffer length
against the shape, so even a hand-built packed object cannot make it read out of bounds.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ._native import load
from .errors import PackedFormatError
from .isa import default_threads, resolve_isa
from .packing_block import PackedBlock
from .packing_nm import PackedNM


def _ptr(a: np.ndarray, ctype: type) -> ctypes._Pointer:
    return a.ctypes.data_as(ctypes.POINTER(ctype))


def _as_rows(x: np.ndarray, k: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """View x[..., K] as a [rows, K] float32 matrix with unit stride along K."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"x has shape {x.shape}, expected (..., {k})")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k) if x.ndim != 2 else x
    if (
        x2.dtype != np.float32
        or x2.strides[1] != 4
        or x2.strides[0] % 4
        or x2.strides[0] < 4 * k
        or not x2.flags.aligned
    ):
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
    return x2, lead


# Below this many multiply-adds a call takes tens of microseconds on one core, about what
# waking a second thread costs: small layers run single-threaded unless told otherwise.
_MIN_MACS_PER_THREAD = 1 << 20


def pick_threads(macs: int, limit: int | None = None) -> int:
    """Threads for a product of ``macs`` multiply-adds: one per ~1M, at most ``limit``
    (default: the cores available)."""
    return max(1, min(limit or default_threads(), macs // _MIN_MACS_PER_THREAD))


def _threads(threads: int | None, macs: int) -> int:
    return threads if threads else pick_threads(macs)


def _check(status: int) -> None:
    if status != 0:
        msg = load().sk_status_string(status).decode()
        raise PackedFormatError(f"kernel rejected its arguments: {msg} (status {status})")


def nm_matmul(
    x: np.ndarray, packed: PackedNM, threads: int | None = None, isa: str | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """y[..., C] = x[..., K] @ W (+ ``bias[C]``) for an N:M packed W (``pack_nm``).

    ``threads`` defaults to the cores available (one for products under ~1M multiply-adds,
    where waking a second thread costs as much as the work); ``isa`` (or $SPARSEC_KERNEL_ISA) forces a
    code path, otherwise the widest one this CPU supports runs.
    """
    lib = load()
    x2, lead = _as_rows(x, packed.k)
    rows = x2.shape[0]
    y = np.empty((rows, packed.cols), dtype=np.float32)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if b is not None and b.size != packed.cols:
        raise ValueError(f"bias has {b.size} values, expected {packed.cols}")
    status = lib.sk_nm_matmul_bias(
        _ptr(x2, ctypes.c_float), x2.strides[0] // 4 if rows else packed.k, rows, packed.k,
        packed.cols, packed.n, packed.m, _ptr(packed.values, ctypes.c_float),
        packed.values.size, _ptr(packed.meta, ctypes.c_uint16), packed.meta.size,
        None if b is None else _ptr(b, ctypes.c_float), _ptr(y, ctypes.c_float), packed.cols,
        resolve_isa(isa), _threads(threads, rows * packed.values.size),
    )
    _check(status)
    return y.reshape(*lead, packed.cols)


def block_matmul(
    x: np.ndarray, packed: PackedBlock, threads: int | None = None, isa: str | None = None
) -> np.ndarray:
    """y[..., C] = x[..., K] @ W for a block-sparse packed W (``pack_block``)."""
    lib = load()
    x2, lead = _as_rows(x, packed.k)
    rows = x2.shape[0]
    y = np.empty((rows, packed.cols), dtype=np.float32)
    status = lib.sk_block_matmul(
        _ptr(x2, ctypes.c_float), x2.strides[0] // 4 if rows else packed.k, rows, packed.k,
        packed.cols, packed.bk, _ptr(packed.tile_ptr, ctypes.c_int32), packed.tile_ptr.size,
        _ptr(packed.kidx, ctypes.c_int32), packed.kidx.size,
        _ptr(packed.values, ctypes.c_float), packed.values.size, _ptr(y, ctypes.c_float),
        packed.cols, resolve_isa(isa), _threads(threads, rows * packed.values.size),
    )
    _check(status)
    return y.reshape(*lead, packed.cols)
