"""Artifacts: an output folder written atomically (complete or absent, never half-written)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sparsec.errors import OutputError

MANIFEST = "manifest.json"


def check_output_dir(out: Path) -> None:
    """Fail fast, before any work, if `out` cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise OutputError(f"output directory {out} is not empty and holds no sparsec artifact; refusing to overwrite it")
    # Missing parent folders are created when the artifact is written; the nearest
    # existing ancestor must be a writable folder.
    ancestor = out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot write output directory {out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write output directory {out}: {ancestor} is not writable")


def write_artifact(out: Path, files: dict[str, bytes]) -> Path:
    """Write all files into a temporary sibling folder, then swap it into place."""
    out = Path(out)
    check_output_dir(out)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write output directory {out}: {e.strerror}") from None
    old: Path | None = None
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old, out)
        raise OutputError(f"cannot write output directory {out}: {e.strerror or e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()
