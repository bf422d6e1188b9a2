"""The backend interface: legalize, compile to a runnable form, run, benchmark."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from sparsec.plugin_registry import PluginRegistry
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
    """A registered backend (`@register_backend`): legalizes `com.sparsec` ops and runs the result."""

    name: str = ""
    fidelity_note: str = ""  # how `runner` differs from the deployed runtime, if it does

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

    def setting_runners(self, compiled: CompiledModel, threads: int = 2) -> dict[str, tuple[dict[str, Any], Runner]]:
        """Runners of the compiled model under each runtime setting worth measuring
        (name -> (settings, runner)); the compile keeps the fastest in the manifest."""
        return {"default": ({}, self.runner(compiled, threads))}

    def extra_files(self, model: ir.Model, target: Any) -> dict[str, bytes]:
        """Artifact files beyond model.onnx (e.g. a runtime session configuration)."""
        return {}

    def manifest_entries(self, compiled: CompiledModel) -> dict[str, Any]:
        """Manifest sections describing `compiled.files` (e.g. the op library and its hash)."""
        return {}


# Each sub-package of sparsec.backends is one backend; importing it registers its class and
# its legalization passes.
_REGISTRY: PluginRegistry[type[Backend]] = PluginRegistry("backend", "sparsec.backends", subpackages_only=True)


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make `cls` the backend called `cls.name` (targets name it)."""
    return _REGISTRY.register(cls)


def known_backends() -> list[str]:
    return _REGISTRY.names()


def get_backend(name: str) -> Backend:
    return _REGISTRY.get(name)()
