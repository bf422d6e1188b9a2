"""The pass registry: kebab-case name -> Pass class; duplicate names are refused."""

from __future__ import annotations

import importlib
import re

from sparsec.errors import PipelineError
from sparsec.pm.pass_base import Pass

_PASSES: dict[str, type[Pass]] = {}
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not _NAME.fullmatch(cls.name or ""):
        raise ValueError(f"pass class {cls.__name__} needs a kebab-case name, has {cls.name!r}")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"pass name '{cls.name}' is registered twice ({existing.__module__} and "
            f"{cls.__module__}); was a pass module imported under two names?"
        )
    _PASSES[cls.name] = cls
    return cls


def _load_builtin_passes() -> None:
    # Importing the packages registers their passes; done lazily to avoid import cycles.
    importlib.import_module("sparsec.passes")
    from sparsec.backends.base import known_backends

    known_backends()  # imports every backend package, which registers its passes


def get_pass(name: str) -> type[Pass]:
    _load_builtin_passes()
    try:
        return _PASSES[name]
    except KeyError:
        known = ", ".join(sorted(_PASSES))
        raise PipelineError(f"unknown pass '{name}' (known passes: {known})") from None


def all_passes() -> dict[str, type[Pass]]:
    _load_builtin_passes()
    return dict(sorted(_PASSES.items()))
