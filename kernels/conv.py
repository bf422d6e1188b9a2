"""Python entry point of the sparse convolution kernel: y = act(conv2d(x, W) + bias), NCHW fp32.

Offsets of the packed taps depend on the input size; they are computed once per geometry and
kept on the PackedConv (the ONNX Runtime op computes them once at session creation).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from ._native import load
from .errors import PackedFormatError
from .isa import resolve_isa
from .matmul import pick_threads
from .packing_conv import PackedConv

ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_i64 = ctypes.c_int64
_int = ctypes.c_int


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = load()
    lib.sk_conv_out_shape.argtypes = [_i64, _i64, _int, _int, _int, _int, _int, _int, _int,
                                      ctypes.POINTER(_i64), ctypes.POINTER(_i64)]
    lib.sk_conv_offsets.argtypes = [_i64, _i64, _i64, _int, _int, _int, _int, _int, _int, _int,
                                    _i32p, _i64, _i32p]
    lib.sk_conv2d.argtypes = [_f32p, _i64, _i64, _i64, _i64, _i64, _int, _int, _int, _int, _int,
                              _int, _int, _i64, _i32p, _i32p, _i32p, _f32p, _i64, _f32p, _int, _f32p,
                              _int, _int]
    for name in ("sk_conv_out_shape", "sk_conv_offsets", "sk_conv2d"):
        getattr(lib, name).restype = _int
    return lib


def _check(status: int) -> None:
    if status != 0:
        msg = load().sk_status_string(status).decode()
        raise PackedFormatError(f"conv kernel rejected its arguments: {msg} (status {status})")


def _ptr(a: np.ndarray | None, ctype: type) -> ctypes._Pointer | None:
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctype))


def out_shape(h: int, w: int, kh: int, kw: int, stride: int, pads: tuple[int, int, int, int]) -> tuple[int, int]:
    ho, wo = _i64(), _i64()
    _check(_lib().sk_conv_out_shape(h, w, kh, kw, stride, *pads, ctypes.byref(ho), ctypes.byref(wo)))
    return ho.value, wo.value


def offsets(packed: PackedConv, h: int, w: int, stride: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    key = (h, w, stride, tuple(pads))
    off = packed._offsets.get(key)
    if off is None:
        off = np.empty(packed.slots, dtype=np.int32)
        _check(_lib().sk_conv_offsets(packed.cin, h, w, packed.kh, packed.kw, stride, *pads,
                                      _ptr(packed.taps, ctypes.c_int32), packed.slots,
                                      _ptr(off, ctypes.c_int32)))
        packed._offsets[key] = off
    return off


def conv2d(x: np.ndarray, packed: PackedConv, stride: int = 1, pads: tuple[int, int, int, int] = (0, 0, 0, 0),
           bias: np.ndarray | None = None, act: str = "none", threads: int | None = None,
           isa: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """y[N, Cout, Ho, Wo] for x[N, Cin, H, W]; ``pads`` as ONNX (top, left, bottom, right).
    ``out``: a C-contiguous float32 array of that shape to write into (benchmarks reuse one)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != packed.cin:
        raise ValueError(f"x has shape {x.shape}, expected (N, {packed.cin}, H, W)")
    n, _, h, w = x.shape
    ho, wo = out_shape(h, w, packed.kh, packed.kw, stride, pads)
    off = offsets(packed, h, w, stride, pads)
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if bias.size != packed.cout:
            raise ValueError(f"bias has {bias.size} values, expected {packed.cout}")
    shape = (n, packed.cout, ho, wo)
    if out is not None and (out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    y = np.empty(shape, dtype=np.float32) if out is None else out
    macs = n * ho * wo * packed.slots
    status = _lib().sk_conv2d(
        _ptr(x, ctypes.c_float), n, packed.cin, h, w, packed.cout, packed.kh, packed.kw, stride, *pads,
        packed.kc, _ptr(packed.perm, ctypes.c_int32), _ptr(packed.row_ptr, ctypes.c_int32),
        _ptr(off, ctypes.c_int32), _ptr(packed.values, ctypes.c_float), packed.slots,
        _ptr(bias, ctypes.c_float), ACTIVATIONS[act], _ptr(y, ctypes.c_float), resolve_isa(isa),
        threads or pick_threads(macs),
    )
    _check(status)
    return y
