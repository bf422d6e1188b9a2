"""The in-process executor: tasks run one after another in this process (no Ray import)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class LocalShared:
    value: Any

    def get(self) -> Any:
        return self.value


class LocalExecutor:
    name = "local"

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], *, desc: str = "", progress: bool = False) -> list[R]:
        return [fn(task) for task in tqdm(tasks, desc=desc or None, unit="task", disable=not progress)]

    def parallelism(self) -> int:
        return 1

    def share(self, value: Any) -> LocalShared:
        return LocalShared(value)

    def close(self) -> None:
        pass


__all__ = ["LocalExecutor", "LocalShared"]
