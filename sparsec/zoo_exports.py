"""Where a `zoo:NAME` export is cached, computed without importing torch.

`sparsec.models_zoo` imports torch and every model builder (~1.6 s); a compile or inspect of
`zoo:NAME` whose export is already cached needs neither, only this file's path. The key covers
everything that shapes an export: the zoo's and the capture's source and the torch, onnx and
onnxscript versions (read from the installed distributions, not by importing them).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path


def zoo_cache_dir() -> Path:
    """``$SPARSEC_CACHE_DIR/zoo`` if set, else ``~/.cache/sparsec/zoo``."""
    root = os.environ.get("SPARSEC_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "sparsec"
    return base / "zoo"


def export_path(name: str, batch: int = 1, opset: int = 18, dynamic: bool | None = None) -> Path:
    """The cache file of this export (present or not)."""
    return zoo_cache_dir() / "exports" / f"{name}-b{batch}-o{opset}-{dynamic}-{export_key()}.onnx"


@lru_cache(maxsize=1)
def export_key() -> str:
    h = hashlib.sha256(" ".join(_version(d) for d in ("torch", "onnx", "onnxscript")).encode())
    for f in _sources():
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _sources() -> list[Path]:
    spec = importlib.util.find_spec("sparsec.models_zoo")  # finds the folder; runs no zoo code
    assert spec is not None and spec.submodule_search_locations
    zoo = Path(next(iter(spec.submodule_search_locations)))
    return sorted([*zoo.glob("*.py"), Path(__file__).with_name("capture.py")])
