"""The executor interface: where the embarrassingly parallel work of a compile runs.

Sensitivity scans (layer x candidate trials) need no data from one another, so a pass hands
them to an `Executor` as picklable tasks and a module-level function. `map` returns the
results in task order whatever order they finished in, so the caller's reduction is the
same on every executor. Large read-only inputs every task needs (the model's weights, the
calibration data) go through `share` once rather than with every task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Shared(Protocol):
    """A handle to an object shared with every task; `get()` returns it where the task runs."""

    def get(self) -> Any: ...


class Executor(Protocol):
    name: str  # "local", "ray" or "ray:ADDRESS" (what the manifest and logs show)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], *, desc: str = "", progress: bool = False) -> list[R]:
        """`fn(task)` for every task, results in task order. `fn` must be a module-level function."""
        ...

    def parallelism(self) -> int:
        """How many tasks run at once (for callers that cut work into chunks: one per worker)."""
        ...

    def share(self, value: Any) -> Shared:
        """A handle to `value` that tasks can carry cheaply."""
        ...

    def close(self) -> None:
        """Release what the executor started (a local Ray instance); idempotent."""
        ...


__all__ = ["Executor", "Shared"]
