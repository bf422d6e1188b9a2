"""On-disk cache for artefacts that take time to compute (trained zoo weights)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sparsec.zoo_exports import zoo_cache_dir


def cache_dir() -> Path:
    """``$SPARSEC_CACHE_DIR/zoo`` if set, else ``~/.cache/sparsec/zoo``."""
    return zoo_cache_dir()


def config_key(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_state_dict(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write atomically: concurrent processes (e.g. pytest-xdist) never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
