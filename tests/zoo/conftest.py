"""Zoo test fixtures: exports once per session, and the small models' names (the cache is
isolated by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sparsec.models_zoo import ZOO, export_onnx

SMALL_MODELS = [name for name, entry in ZOO.items() if entry.small]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Export each zoo model at most once per session (exports take seconds)."""
    out = tmp_path_factory.mktemp("exports")
    paths: dict[str, Path] = {}

    def get_path(name: str) -> Path:
        if name not in paths:
            paths[name] = export_onnx(name, out / f"{name}.onnx")
        return paths[name]

    return get_path
