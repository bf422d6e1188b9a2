"""Python entry point of the NCHWc sparse convolution: y = act(conv2d(x, W) + bias + sum) on
[N, C/16, H, W, 16] tensors (ONNX Runtime's NCHWc layout), AVX-512 only."""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from ._native import load
from .errors import PackedFormatError
from .isa import resolve_isa
from .matmul import pick_threads
from .packing_nchwc import BLOCK, PackedNchwc

ACTIVATIONS = {"none": 0, "relu": 1, "clip": 2}

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_i64 = ctypes.c_int64
_int = ctypes.c_int
_flt = ctypes.c_float


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = load()
    lib.sk_nchwc_conv.argtypes = [_f32p, _i64, _i64, _i64, _i64, _i64, _i64, _i64] + [_int] * 10 + [
        _i64, _i32p, _i32p, _f32p, _f32p, _f32p, _int, _flt, _flt, _f32p, _int, _int]
    lib.sk_nchwc_conv.restype = _int
    return lib


def out_size(n: int, k: int, stride: int, dilation: int, p0: int, p1: int) -> int:
    return (n + p0 + p1 - ((k - 1) * dilation + 1)) // stride + 1


def nchwc_conv(x: np.ndarray, packed: PackedNchwc, *, strides: tuple[int, int] = (1, 1),
               pads: tuple[int, int, int, int] = (0, 0, 0, 0), dilations: tuple[int, int] = (1, 1),
               bias: np.ndarray | None = None, sum_: np.ndarray | None = None, act: str = "none",
               clip: tuple[float, float] = (0.0, 6.0), threads: int | None = None, isa: str | None = None) -> np.ndarray:
    """x: float32 [N, ib, H, W, 16]; pads (top, left, bottom, right); bias [Cout]; sum_ like the output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 5 or x.shape[1] != packed.ib or x.shape[4] != BLOCK:
        raise PackedFormatError(f"nchwc_conv: input shape {x.shape} does not fit the packed weight ({packed.ib} input blocks)")
    n, _, h, w, _ = x.shape
    pt, pl, pb, pr = pads
    ho = out_size(h, packed.kh, strides[0], dilations[0], pt, pb)
    wo = out_size(w, packed.kw, strides[1], dilations[1], pl, pr)
    y = np.empty((n, packed.ob, max(ho, 0), max(wo, 0), BLOCK), np.float32)
    b = None
    if bias is not None:
        b = np.zeros(packed.ob * BLOCK, np.float32)
        b[: packed.cout] = bias
    s = None if sum_ is None else np.ascontiguousarray(sum_, dtype=np.float32)
    if s is not None and s.shape != y.shape:
        raise PackedFormatError(f"nchwc_conv: sum shape {s.shape} is not the output's {y.shape}")
    macs = n * max(ho, 0) * max(wo, 0) * packed.pairs * BLOCK
    ptr = lambda a, t: None if a is None else a.ctypes.data_as(ctypes.POINTER(t))  # noqa: E731
    status = _lib().sk_nchwc_conv(
        ptr(x, ctypes.c_float), n, packed.ib, h, w, packed.ob, ho, wo, packed.kh, packed.kw, strides[0], strides[1],
        pt, pl, pb, pr, dilations[0], dilations[1], packed.k, ptr(packed.offs, ctypes.c_int32), ptr(packed.idx, ctypes.c_int32),
        ptr(packed.vals, ctypes.c_float), ptr(b, ctypes.c_float), ptr(s, ctypes.c_float), ACTIVATIONS[act],
        clip[0], clip[1], ptr(y, ctypes.c_float), resolve_isa(isa), threads or pick_threads(macs))
    if status != 0:
        msg = load().sk_status_string(status).decode()
        raise PackedFormatError(f"nchwc conv kernel rejected its arguments: {msg} (status {status})")
    return y
