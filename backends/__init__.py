"""Backends (shipped as `sparsec.backends`): each legalizes `com.sparsec` ops and runs models."""

from sparsec.backends.base import Backend, CompiledModel, get_backend
from sparsec.backends.ort import lower_nm_kernels  # noqa: F401  (registers the pass)

__all__ = ["Backend", "CompiledModel", "get_backend"]
