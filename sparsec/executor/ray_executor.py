"""The Ray executor: tasks run as Ray tasks on a local instance or a cluster.

Ray is imported only here, and only when this executor is made (`pip install 'sparsec[ray]'`).
`address=None` starts a local instance (`num_cpus` of this machine's cores); `auto`, a
`host:6379` GCS address or a `ray://host:10001` client address joins a running cluster, whose
nodes must have the same sparsec (and onnxruntime) installed: a task imports its function
from sparsec by name. Ray is connected on first use, so a compile whose passes need no
parallel work never starts it.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

from sparsec.errors import OptionError

T = TypeVar("T")
R = TypeVar("R")
RAY_MISSING = "--executor=ray needs Ray: pip install 'sparsec[ray]'"


def import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise OptionError(RAY_MISSING) from None


@dataclass(frozen=True)
class RayShared:
    ref: Any  # a ray.ObjectRef

    def get(self) -> Any:
        return import_ray().get(self.ref)


class RayExecutor:
    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, task_cpus: float = 1) -> None:
        """`num_cpus`: the size of a local instance started here (ignored when joining a
        cluster); `task_cpus`: the CPUs Ray reserves per task (its scheduling unit)."""
        self._ray = import_ray()
        self.address = address
        self.name = "ray" if address is None else f"ray:{address}"
        self.num_cpus = num_cpus
        self.task_cpus = task_cpus
        self._started = False  # this executor called ray.init (and shuts it down in close)
        self._remote: Any = None  # `_apply` as a Ray remote function

    def _connect(self) -> Any:
        ray = self._ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            else:
                kwargs["address"] = self.address
                check_reachable(self.address, self.name)
            try:
                ray.init(**kwargs)
            except Exception as exc:  # unreachable address, bad client URL, ...
                where = self.address or "a local instance"
                raise OptionError(f"--executor={self.name}: cannot start or reach Ray at {where}: {exc}") from None
            self._started = True
        return ray

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], *, desc: str = "", progress: bool = False) -> list[R]:
        ray = self._connect()
        if self._remote is None:
            # Ray gives a 1-CPU task one BLAS thread, and threaded and single-threaded
            # OpenBLAS routines need not round alike: tasks get this process's thread count.
            env = {"env_vars": {k: str(blas_threads()) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
            self._remote = ray.remote(num_cpus=self.task_cpus, runtime_env=env)(_apply)
        refs = [self._remote.remote(fn, task) for task in tasks]
        with tqdm(total=len(refs), desc=desc or None, unit="task", disable=not progress) as bar:
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
        try:
            return list(ray.get(refs))  # in task order, whatever order they finished in
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)  # a SparsecError raised in a task stays one
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def parallelism(self) -> int:
        cpus = self._connect().cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.task_cpus))

    def share(self, value: Any) -> RayShared:
        return RayShared(self._connect().put(value))

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False
        self._remote = None


def check_reachable(address: str, name: str, timeout: float = 5.0) -> None:
    """A one-line error now for a HOST:PORT (or ray://HOST:PORT) nobody listens on: Ray
    itself retries such an address for minutes."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # `auto`, or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OptionError(f"--executor={name}: cannot reach Ray at {hostport}: {exc.strerror or exc}") from None


def blas_threads() -> int:
    """The BLAS threads numpy uses in this process."""
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl inspects)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
        if counts:
            return counts[0]
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def _apply(fn: Callable[[T], R], task: T) -> R:
    """The one remote function: `fn` travels by reference (a module-level function)."""
    return fn(task)


__all__ = ["RAY_MISSING", "RayExecutor", "RayShared", "import_ray"]
