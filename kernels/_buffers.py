"""Aligned, read-only buffers for packed weights."""

from __future__ import annotations

import numpy as np

_ALIGN = 64  # one cache line = one zmm: aligned loads never split a line


def aligned_empty(size: int, dtype: np.dtype | type) -> np.ndarray:
    """A 1-D, 64-byte aligned, writable, uninitialised array of ``size`` elements."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(size * itemsize + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset : offset + size * itemsize].view(dtype)


def aligned_copy(a: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """A 1-D, 64-byte aligned, read-only copy of ``a`` (flattened, cast to ``dtype``)."""
    flat = np.asarray(a, dtype=dtype).reshape(-1)
    out = aligned_empty(flat.size, dtype)
    out[...] = flat
    out.flags.writeable = False
    return out
