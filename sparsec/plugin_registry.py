"""A registry of classes found by name, filled by importing the modules of one package.

Targets (`sparsec.targets`) and backends (`sparsec.backends`) are registered this way: a
new one is a new module or sub-package with a decorated class, and nothing else is edited.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from sparsec.errors import OptionError

T = TypeVar("T", bound=type)


class PluginRegistry(Generic[T]):
    def __init__(self, kind: str, package: str, *, subpackages_only: bool = False) -> None:
        self.kind = kind  # "target", "backend": how errors name an entry
        self.package = package  # imported on lookup, which registers what it holds
        self.subpackages_only = subpackages_only
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: make `cls` available under `cls.name`; a second class with the
        same name is refused (usually a module imported under two names)."""
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{self.kind} class {cls.__name__} needs a name")
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} '{name}' is registered twice ({existing.__module__} and {cls.__module__})")
        self._classes[name] = cls
        return cls

    def _discover(self) -> None:
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg or not self.subpackages_only:
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._classes)

    def get(self, name: str) -> T:
        """The class called `name`; an unknown name is a one-line error listing the known ones."""
        self._discover()
        try:
            return self._classes[name]
        except KeyError:
            raise OptionError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self._classes))})") from None
