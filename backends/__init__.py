"""Backends (shipped as `sparsec.backends`): each legalizes `com.sparsec` ops and runs models."""

from sparsec.backends.base import Backend, CompiledModel, get_backend

__all__ = ["Backend", "CompiledModel", "get_backend"]
