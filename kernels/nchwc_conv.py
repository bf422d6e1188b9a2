"""Python entry point of the NCHWc sparse convolution: y = act(conv2d(x, W) + bias + sum) on
[N, C/16, H, W, 16] tensors (ONNX Runtime's NCHWc layout), AVX-512 only."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

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
    lib.sk_nchwc_conv_dw.argtypes = [_f32p, _i64, _i64, _i64, _i64, ctypes.POINTER(_DwStruct), _i64, _i64, _i64,
                                     _i64, _i32p, _i32p, _f32p, _f32p, _f32p, _int, _flt, _flt, _f32p, _int, _int]
    lib.sk_nchwc_conv_dw.restype = _int
    return lib


class _DwStruct(ctypes.Structure):  # sk_nchwc_dw (sk_nchwc.h)
    _fields_ = [("w", _f32p), ("bias", _f32p)] + [(n, _int) for n in (
        "kh", "kw", "sh", "sw", "pt", "pl", "pb", "pr", "dh", "dw", "act")] + [("clip_lo", _flt), ("clip_hi", _flt)]


@dataclass(frozen=True)
class Depthwise:
    """A depthwise conv (weight [C, 1, kh, kw], one channel a group) whose output only a 1x1
    stride-1 conv reads: ``nchwc_conv(x, packed_1x1, depthwise=...)`` runs it inside that conv."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    act: str = "none"
    clip: tuple[float, float] = (0.0, 6.0)


def pack_depthwise(weight: np.ndarray) -> np.ndarray:
    """[C, 1, kh, kw] -> [C/16 rounded up, kh, kw, 16] (ORT's NCHWc depthwise layout), zero-padded."""
    c, one, kh, kw = weight.shape
    if one != 1:
        raise PackedFormatError(f"depthwise weight must be [C, 1, kh, kw], not {list(weight.shape)}")
    ib = -(-c // BLOCK)
    full = np.zeros((ib * BLOCK, kh, kw), np.float32)
    full[:c] = weight[:, 0]
    return np.ascontiguousarray(full.reshape(ib, BLOCK, kh, kw).transpose(0, 2, 3, 1))


def _ptr(a: np.ndarray | None, t: type) -> object:
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(t))


def out_size(n: int, k: int, stride: int, dilation: int, p0: int, p1: int) -> int:
    return (n + p0 + p1 - ((k - 1) * dilation + 1)) // stride + 1


def nchwc_conv(x: np.ndarray, packed: PackedNchwc, *, strides: tuple[int, int] = (1, 1),
               pads: tuple[int, int, int, int] = (0, 0, 0, 0), dilations: tuple[int, int] = (1, 1),
               bias: np.ndarray | None = None, sum_: np.ndarray | None = None, act: str = "none",
               clip: tuple[float, float] = (0.0, 6.0), threads: int | None = None, isa: str | None = None,
               depthwise: Depthwise | None = None) -> np.ndarray:
    """x: float32 [N, ib, H, W, 16]; pads (top, left, bottom, right); bias [Cout]; sum_ like the output.
    With ``depthwise`` (``packed`` 1x1, strides and pads at their defaults) x is the depthwise
    conv's input and the 1x1 conv reads its output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 5 or x.shape[1] != packed.ib or x.shape[4] != BLOCK:
        raise PackedFormatError(f"nchwc_conv: input shape {x.shape} does not fit the packed weight ({packed.ib} input blocks)")
    n, _, h, w, _ = x.shape
    pt, pl, pb, pr = depthwise.pads if depthwise else pads
    kh, kw = depthwise.weight.shape[2:] if depthwise else (packed.kh, packed.kw)
    st, dil = (depthwise.strides, depthwise.dilations) if depthwise else (strides, dilations)
    ho = out_size(h, kh, st[0], dil[0], pt, pb)
    wo = out_size(w, kw, st[1], dil[1], pl, pr)
    y = np.empty((n, packed.ob, max(ho, 0), max(wo, 0), BLOCK), np.float32)
    b = None
    if bias is not None:
        b = np.zeros(packed.ob * BLOCK, np.float32)
        b[: packed.cout] = bias
    s = None if sum_ is None else np.ascontiguousarray(sum_, dtype=np.float32)
    if s is not None and s.shape != y.shape:
        raise PackedFormatError(f"nchwc_conv: sum shape {s.shape} is not the output's {y.shape}")
    macs = n * max(ho, 0) * max(wo, 0) * packed.pairs * BLOCK
    if depthwise is not None:
        return _with_depthwise(x, packed, depthwise, b, s, y, act, clip, threads or pick_threads(macs), isa)
    status = _lib().sk_nchwc_conv(
        _ptr(x, ctypes.c_float), n, packed.ib, h, w, packed.ob, ho, wo, packed.kh, packed.kw, strides[0], strides[1],
        pt, pl, pb, pr, dilations[0], dilations[1], packed.k, _ptr(packed.offs, ctypes.c_int32), _ptr(packed.idx, ctypes.c_int32),
        _ptr(packed.vals, ctypes.c_float), _ptr(b, ctypes.c_float), _ptr(s, ctypes.c_float), ACTIVATIONS[act],
        clip[0], clip[1], _ptr(y, ctypes.c_float), resolve_isa(isa), threads or pick_threads(macs))
    if status != 0:
        msg = load().sk_status_string(status).decode()
        raise PackedFormatError(f"nchwc conv kernel rejected its arguments: {msg} (status {status})")
    return y


def _with_depthwise(x: np.ndarray, packed: PackedNchwc, d: Depthwise, b: np.ndarray | None, s: np.ndarray | None,
                    y: np.ndarray, act: str, clip: tuple[float, float], threads: int, isa: str | None) -> np.ndarray:
    if packed.kh != 1 or packed.kw != 1:
        raise PackedFormatError(f"nchwc_conv: a depthwise conv runs only ahead of a 1x1 conv, not {packed.kh}x{packed.kw}")
    if -(-d.weight.shape[0] // BLOCK) != packed.ib:
        raise PackedFormatError(f"nchwc_conv: depthwise conv of {d.weight.shape[0]} channels ahead of {packed.ib} input blocks")
    dw = pack_depthwise(np.asarray(d.weight, np.float32))
    db = None
    if d.bias is not None:
        db = np.zeros(packed.ib * BLOCK, np.float32)
        db[: d.weight.shape[0]] = d.bias
    spec = _DwStruct(_ptr(dw, ctypes.c_float), _ptr(db, ctypes.c_float), d.weight.shape[2], d.weight.shape[3],
                     d.strides[0], d.strides[1], *d.pads, d.dilations[0], d.dilations[1], ACTIVATIONS[d.act],
                     d.clip[0], d.clip[1])
    n, _, h, w, _ = x.shape
    status = _lib().sk_nchwc_conv_dw(
        _ptr(x, ctypes.c_float), n, packed.ib, h, w, ctypes.byref(spec), packed.ob, y.shape[2], y.shape[3], packed.k,
        _ptr(packed.offs, ctypes.c_int32), _ptr(packed.idx, ctypes.c_int32), _ptr(packed.vals, ctypes.c_float),
        _ptr(b, ctypes.c_float), _ptr(s, ctypes.c_float), ACTIVATIONS[act], clip[0], clip[1],
        _ptr(y, ctypes.c_float), resolve_isa(isa), threads)
    if status != 0:
        msg = load().sk_status_string(status).decode()
        raise PackedFormatError(f"nchwc conv kernel (with depthwise) rejected its arguments: {msg} (status {status})")
    return y
