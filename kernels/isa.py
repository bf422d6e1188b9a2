"""Instruction-set selection: run-time CPU feature dispatch with an override for tests.

``SPARSEC_KERNEL_ISA=avx512|avx2|neon|scalar`` forces a path so every path can be tested on
one machine; without it the widest path the CPU supports is used.
"""

from __future__ import annotations

import functools
import os

from ._native import load
from .errors import KernelUnavailableError

ISA_CODES: dict[str, int] = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
_PREFERENCE = ("avx512", "neon", "avx2", "scalar")
ENV_ISA = "SPARSEC_KERNEL_ISA"


def available_isas() -> list[str]:
    """ISAs both compiled into the library and supported by this CPU, widest first."""
    return list(_supported())


@functools.lru_cache(maxsize=1)
def _supported() -> tuple[str, ...]:
    # CPU features do not change while the process runs: probe once, not per call.
    lib = load()
    return tuple(name for name in _PREFERENCE if lib.sk_isa_supported(ISA_CODES[name]))


def resolve_isa(isa: str | None = None) -> int:
    """Code of the ISA to run: the argument, else $SPARSEC_KERNEL_ISA, else the widest."""
    name = isa or os.environ.get(ENV_ISA) or None
    supported = _supported()
    if name is None:
        return ISA_CODES[supported[0]]
    name = name.strip().lower()
    if name not in ISA_CODES:
        raise ValueError(f"unknown kernel ISA {name!r}; expected one of {sorted(ISA_CODES)}")
    if name not in supported:
        raise KernelUnavailableError(
            f"kernel ISA {name!r} is not available here: {list(supported)}"
        )
    return ISA_CODES[name]


def default_threads() -> int:
    """Cores this process may run on (affinity-aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
