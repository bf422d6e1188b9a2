"""Locate and load the compiled kernel library (a plain C shared library, via ctypes).

ctypes instead of a CPython extension keeps the C side free of Python headers, so the same
sources cross-compile for aarch64 and run under the sanitizers without Python. Loading is
lazy: ``import sparsec.kernels`` never fails, the first kernel call raises
KernelUnavailableError if the library was not built.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from pathlib import Path
from typing import Any

from .errors import KernelUnavailableError

_LIB_STEM = "_sparsec_kernels"
_ENV_LIB = "SPARSEC_KERNELS_LIB"

_f32p = ctypes.POINTER(ctypes.c_float)
_u16p = ctypes.POINTER(ctypes.c_uint16)
_i32p = ctypes.POINTER(ctypes.c_int32)
_i64 = ctypes.c_int64
_int = ctypes.c_int


def _candidates() -> list[str]:
    """Library paths to try: an explicit override, then next to this file (editable and
    regular installs both put the built extension in the package directory)."""
    found = []
    if os.environ.get(_ENV_LIB):
        found.append(os.environ[_ENV_LIB])
    here = Path(__file__).resolve().parent
    found += sorted(glob.glob(str(here / f"{_LIB_STEM}*.so")))
    found += sorted(glob.glob(str(here / f"{_LIB_STEM}*.dylib")))
    return found


def _declare(lib: ctypes.CDLL) -> None:
    lib.sk_isa_supported.argtypes = [_int]
    lib.sk_isa_supported.restype = _int
    lib.sk_max_threads.argtypes = []
    lib.sk_max_threads.restype = _int
    lib.sk_status_string.argtypes = [_int]
    lib.sk_status_string.restype = ctypes.c_char_p
    lib.sk_nm_meta_words.argtypes = [_int]
    lib.sk_nm_meta_words.restype = _int
    lib.sk_nm_matmul.argtypes = [
        _f32p, _i64, _i64, _i64, _i64, _int, _int, _f32p, _i64, _u16p, _i64, _f32p, _i64,
        _int, _int,
    ]
    lib.sk_nm_matmul.restype = _int
    lib.sk_nm_matmul_bias.argtypes = [
        _f32p, _i64, _i64, _i64, _i64, _int, _int, _f32p, _i64, _u16p, _i64, _f32p, _f32p, _i64,
        _int, _int,
    ]
    lib.sk_nm_matmul_bias.restype = _int
    if hasattr(lib, "sk_nm_pack"):  # a library built before it (SPARSEC_KERNELS_LIB) packs in numpy
        lib.sk_nm_pack.argtypes = [_f32p, _i64, _i64, _i64, _int, _int, _f32p, _i64, _u16p, _i64]
        lib.sk_nm_pack.restype = _int
    if hasattr(lib, "sk_nm_prune"):
        lib.sk_nm_prune.argtypes = [_f32p, _i64, _i64, _i64, _int, _int, _int, _f32p, _i64]
        lib.sk_nm_prune.restype = _int
    lib.sk_block_matmul.argtypes = [
        _f32p, _i64, _i64, _i64, _i64, _int, _i32p, _i64, _i32p, _i64, _f32p, _i64, _f32p,
        _i64, _int, _int,
    ]
    lib.sk_block_matmul.restype = _int


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """Return the loaded library or raise KernelUnavailableError (one line)."""
    paths = _candidates()
    if not paths:
        raise KernelUnavailableError(
            "sparsec kernels are not built (no C compiler at install time?): install gcc and "
            "re-run `pip install -e .`"
        )
    errors = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        _declare(lib)
        return lib
    raise KernelUnavailableError("sparsec kernels failed to load: " + "; ".join(errors))


def library_path() -> str:
    """Path of the loaded library (ONNX Runtime loads the same file for its custom ops)."""
    return load()._name


def available() -> bool:
    try:
        load()
    except KernelUnavailableError:
        return False
    return True


def optional_function(name: str) -> Any:
    """The library's C function `name`, or None when the library is not built or a build of it
    (SPARSEC_KERNELS_LIB) predates the function: callers then use their numpy path."""
    try:
        return getattr(load(), name, None)
    except KernelUnavailableError:
        return None
