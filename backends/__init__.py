"""Backends (shipped as `sparsec.backends`): each sub-package is one backend.

A backend is a folder here with a `@register_backend` class (legalization pipeline, check,
runner) and its legalization passes; `get_backend(name)` imports every sub-package, which
registers them. Targets (`sparsec.targets`) name the backend they compile for.
"""

from sparsec.backends.base import (
    Backend,
    CompiledModel,
    get_backend,
    known_backends,
    register_backend,
)

__all__ = ["Backend", "CompiledModel", "get_backend", "known_backends", "register_backend"]
