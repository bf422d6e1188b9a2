"""The machine a tuning result belongs to: CPU model, ISA flags, cores, runtime versions.

A result measured on one CPU says nothing about another (DESIGN.md §5: a sparse path 1.7x
on a Zen 4 was 1.0x on an AVX-512 EPYC), so the cache is keyed by this signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

# Environment variables that change what the kernels do, hence what a measurement means.
_KERNEL_ENV = ("SPARSEC_KERNEL_ISA", "SPARSEC_POOL_SPIN_US", "SPARSEC_NM_ROWVEC_MIN_ROWS", "SPARSEC_KERNEL_POOL",
               "SPARSEC_NCHWC_FLAT_W", "SPARSEC_NCHWC_FLAT_NP")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in (platform.processor(), platform.machine(), ""):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = sorted(value.split())
    return model, flags


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _static_part() -> tuple[str, list[str]]:
    return _cpuinfo()


def cpu_signature() -> dict[str, Any]:
    """What a cached measurement is valid for (flags hashed: the full list is long)."""
    import onnxruntime

    import sparsec

    model, flags = _static_part()
    return {
        "cpu": model,
        "flags_sha": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
        "avx512f": "avx512f" in flags,
        "cores": usable_cores(),
        "onnxruntime": onnxruntime.__version__,
        "sparsec": sparsec.__version__,
        "kernel_env": {k: os.environ[k] for k in _KERNEL_ENV if os.environ.get(k)},
        # A rebuilt kernel library (same version, new code) measures differently: its own cache.
        "kernels": kernel_library_digest(),
    }


def kernel_library_digest() -> str | None:
    """sha256 (16 hex digits) of the kernel library file in use; None where it is not built."""
    from sparsec.kernels import _native

    if not _native.available():
        return None
    return _file_digest(_native.library_path())


@lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def signature_id(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/sparsec/tune (~/.cache/sparsec/tune when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsec" / "tune"
