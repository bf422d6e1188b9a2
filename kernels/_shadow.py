"""Import the installed package that this folder shadows when Python runs from the repository
root (`python -m pytest`, `python -c ...`): there `import kernels` finds this folder first."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType


def import_shadowed(name: str, shadow_path: Sequence[str]) -> ModuleType:
    """The module `name` from sys.path without the folder holding `shadow_path`; the same
    ModuleNotFoundError as a plain import when there is none."""
    root = {os.path.realpath(os.path.dirname(p)) for p in shadow_path}
    path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) not in root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
