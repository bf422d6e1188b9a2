"""The on-disk cache of `zoo:NAME` exports, found without importing torch.

A torch export of a zoo transformer takes 5-15 s and gives the same bytes every time, so it is
made once per (model, shapes, opset). `sparsec.models_zoo` imports torch and every model
builder (~1.6 s); a compile or inspect of a cached `zoo:NAME` needs neither, only the file. The key covers
everything that shapes an export: the zoo's and the capture's source and the torch, onnx and
onnxscript versions (read from the installed distributions, not by importing them).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import onnx_ir as ir


def zoo_cache_dir() -> Path:
    """``$SPARSEC_CACHE_DIR/zoo`` if set, else ``~/.cache/sparsec/zoo``."""
    root = os.environ.get("SPARSEC_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "sparsec"
    return base / "zoo"


def cached_export_ir(name: str, batch: int = 1, opset: int = 18, dynamic: bool | None = None) -> ir.Model:
    """`models_zoo.export_ir` through the cache (``zoo_cache_dir()/exports``): what `zoo:NAME`
    compiles. The file is loaded like any user's .onnx file; its ops are checked by the caller."""
    from sparsec.ir.file_tensor import weight_bytes
    from sparsec.ir.io import load_model

    path = export_path(name, batch, opset, dynamic)
    if not path.is_file():
        from sparsec.models_zoo import export as zoo_export  # an unknown name fails in export_ir

        model = zoo_export.export_ir(name, batch=batch, opset=opset, dynamic=dynamic)
        if weight_bytes(model) > zoo_export.MAX_INLINE_BYTES:  # needs external data: not cached
            return model
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:  # written aside and renamed: a concurrent process never reads a partial file
            ir.save(model, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return load_model(path, check_ops=False)


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
