"""The memory budget: sizes like `8G`, the default budget, peak RSS, and in-memory vs streaming.

A model whose weights fit `budget * WHOLE_MODEL_SHARE` is run whole (one session, as
before); a bigger one is run stage by stage (`sparsec.calib.staged`), each stage holding at
most `budget * STAGE_SHARE` of weights, and its pruned weights are spilled to disk.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparsec.errors import InputError

DEFAULT_FRACTION = 0.5  # of the machine's (or the cgroup's) memory
WHOLE_MODEL_SHARE = 0.25  # a whole-model session + dense copy + outputs stay within the budget
STAGE_SHARE = 1 / 16  # one LLaMA-7B-width layer (0.8 GB) per stage under a 12 GB budget
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`8G`, `512M`, `1.5GB`, `1073741824` -> bytes; anything else is one clear error."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise InputError(f"--max-memory: '{text}' is not a size (examples: 8G, 512M, 1.5GB)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 64 << 20:
        raise InputError(f"--max-memory: '{text}' is below the 64M that a compile needs at least")
    return int(value)


def machine_memory() -> int:
    """Physical memory, or the cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_budget() -> int:
    return int(machine_memory() * DEFAULT_FRACTION)


def peak_rss_bytes() -> int:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


class Budget:
    """What a compile may hold: `bytes` in all; models above `whole_model_bytes` stream."""

    def __init__(self, total: int | None = None) -> None:
        self.bytes = int(total) if total is not None else default_budget()
        self.whole_model_bytes = int(self.bytes * WHOLE_MODEL_SHARE)
        self.stage_bytes = max(1 << 16, int(self.bytes * STAGE_SHARE))

    def streams(self, weight_bytes: int) -> bool:
        return weight_bytes > self.whole_model_bytes

    def to_dict(self) -> dict[str, int]:
        return {"max_memory_bytes": self.bytes, "whole_model_bytes": self.whole_model_bytes, "stage_bytes": self.stage_bytes}


# Models above this run their checks (pass numerics, fidelity without a latency run) in
# stages of at most this many weight bytes even within the budget: a whole-model session
# holds the weights twice while it is built (our arrays + ORT's copy).
LEAN_STAGE_BYTES = 128 << 20


def lean_stage_bytes(budget: Budget, weight_bytes: int) -> int | None:
    """Stage size for a check run on a model of `weight_bytes`, or None to run it whole."""
    if budget.streams(weight_bytes):
        return budget.stage_bytes
    if weight_bytes > LEAN_STAGE_BYTES:
        return min(budget.stage_bytes, LEAN_STAGE_BYTES)
    return None


def tune_malloc() -> None:
    """A fixed mmap threshold (1 MB) for glibc malloc: weight-sized blocks are then returned
    to the system when freed. glibc's default raises the threshold after each large free, so
    a freed 600 MB session stayed resident (GPT-2-small: 1.41 GB after a check vs 0.78 GB)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@contextmanager
def small_pages() -> Iterator[None]:
    """Within the block numpy does not ask for transparent huge pages (its default for arrays
    of 4 MB and more). A compile writes each pruned and packed weight once: where the kernel
    gives huge pages only on request (THP `madvise`, Debian's default), each such fault zeroes
    2 MB and may compact memory first, which cost a BERT-base compile ~0.2 s of its 4.8 (a
    third of the packing). Deployed sessions are not affected: ONNX Runtime allocates its own."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy 2
    except ImportError:
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # type: ignore[no-redef]  # numpy 1
        except ImportError:  # not there: nothing to switch
            yield
            return
    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)


_CURRENT: list[Budget] = []


@contextmanager
def budget_scope(budget: Budget) -> Iterator[Budget]:
    """Makes `budget` the one `current_budget()` returns (numerics, calibration) within the block."""
    _CURRENT.append(budget)
    try:
        yield budget
    finally:
        _CURRENT.remove(budget)


def current_budget() -> Budget:
    return _CURRENT[-1] if _CURRENT else Budget()


__all__ = ["Budget", "budget_scope", "current_budget", "default_budget", "parse_size", "peak_rss_bytes"]
