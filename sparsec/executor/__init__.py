"""Executors: where the parallel work of a compile (sensitivity trials) runs.

`make_executor("local")` runs it in this process; `make_executor("ray")` on a local Ray
instance; `make_executor("ray:ADDRESS")` on a Ray cluster (ADDRESS: `auto`, `HOST:6379` or
`ray://HOST:10001`). Results are the same on every executor: tasks are deterministic and
their results come back in task order. Ray is imported only by the Ray executor.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sparsec.errors import OptionError
from sparsec.executor.base import Executor, Shared
from sparsec.executor.local import LocalExecutor

KINDS = ("local", "ray", "ray:ADDRESS")


def parse_executor(spec: str) -> tuple[str, str | None]:
    """(kind, address) from `local`, `ray` or `ray:ADDRESS`; a bad spec is a one-line OptionError."""
    text = spec.strip()
    if text == "local":
        return "local", None
    if text == "ray":
        return "ray", None
    if text.startswith("ray:"):
        address = text[len("ray:"):].strip()
        if not address:
            raise OptionError("--executor=ray: needs an address after 'ray:' (auto, HOST:6379 or ray://HOST:10001), or plain 'ray'")
        if any(c.isspace() for c in address):
            raise OptionError(f"--executor: bad Ray address '{address}' (auto, HOST:6379 or ray://HOST:10001)")
        return "ray", address
    raise OptionError(f"unknown executor '{spec}' (known: {', '.join(KINDS)})")


def check_executor(spec: str) -> str:
    """`spec` if it names a usable executor (Ray installed for `ray`), else a one-line OptionError."""
    kind, _ = parse_executor(spec)
    if kind == "ray" and importlib.util.find_spec("ray") is None:
        from sparsec.executor.ray_executor import RAY_MISSING

        raise OptionError(RAY_MISSING)
    return spec


def make_executor(spec: str | Executor | None = None, **ray_options: Any) -> Executor:
    """An executor from a spec string (None: local); an Executor is returned as it is.
    `ray_options` (e.g. num_cpus=2) go to `RayExecutor`."""
    if spec is None:
        return LocalExecutor()
    if not isinstance(spec, str):
        return spec
    kind, address = parse_executor(spec)
    if kind == "local":
        return LocalExecutor()
    from sparsec.executor.ray_executor import RayExecutor

    return RayExecutor(address, **ray_options)


__all__ = ["KINDS", "Executor", "LocalExecutor", "Shared", "check_executor", "make_executor", "parse_executor"]
