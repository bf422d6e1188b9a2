"""The backend interface: legalize, compile to a runnable form, run, benchmark."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.errors import OptionError
from sparsec.pm.pipeline import Pipeline

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class CompiledModel:
    """What a backend produced: the lowered IR plus what is needed to run it."""

    backend: str
    model: ir.Model
    runtime_ops: list[str] = field(default_factory=list)  # custom ops needing the sparsec runtime
    files: dict[str, bytes] = field(default_factory=dict)  # artifact files beyond model.onnx


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def legalize_pipeline(self) -> Pipeline:
        """Passes that turn `com.sparsec` ops into something this backend runs."""

    def check(self, model: ir.Model) -> list[str]:
        """Ops this backend cannot run after legalization (reported at compile time)."""
        return []

    def runtime_ops(self, model: ir.Model) -> list[str]:
        """Custom ops in the compiled model that need the sparsec runtime to load."""
        return []

    @abstractmethod
    def runner(self, compiled: CompiledModel, threads: int = 2) -> Runner:
        """A callable running the compiled model on feeds."""


def get_backend(name: str) -> Backend:
    from sparsec.backends.ort.backend import OrtBackend

    backends: dict[str, Callable[[], Backend]] = {"ort": OrtBackend}
    try:
        return backends[name]()
    except KeyError:
        raise OptionError(f"unknown backend '{name}' (known: {', '.join(backends)})") from None
