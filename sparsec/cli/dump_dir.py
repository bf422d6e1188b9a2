"""`--ir-dump-dir` that owns what it writes: a rerun replaces its own dumps, nothing else.

The folder is marked by `.sparsec-ir-dump.json`, the list of files the last run wrote. A new
run removes exactly those (so no dump of a longer earlier pipeline is left to mislead) and
leaves anything else alone; a non-empty folder without the mark is refused before any work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sparsec.errors import OutputError
from sparsec.output_files import nearest_existing, probe_writable_dir
from sparsec.pm.instruments import IRDumpDir

if TYPE_CHECKING:
    import onnx_ir as ir

    from sparsec.pm.manager import PassRecord
    from sparsec.pm.pass_base import Pass

MARKER = ".sparsec-ir-dump.json"


def _owned(folder: Path) -> list[str] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return None
    return [f for f in files if isinstance(f, str) and f and "/" not in f and f not in (".", "..")]


def prepare_dump_dir(folder: Path) -> None:
    """Make `folder` ready for a new dump, or raise OutputError saying why it cannot be."""
    folder = Path(folder)
    what = f"--ir-dump-dir {folder}"
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what}: exists and is not a folder")
    if not folder.is_dir():
        ancestor = nearest_existing(folder)
        if not ancestor.is_dir():
            raise OutputError(f"{what}: {ancestor} is not a folder")
        probe_writable_dir(ancestor, what)
        return
    entries = sorted(os.listdir(folder))
    owned = _owned(folder)
    if owned is None:
        if entries:
            raise OutputError(
                f"{what}: folder is not empty and holds no earlier sparsec IR dump (first entry: "
                f"'{entries[0]}'); choose a new or empty folder"
            )
        owned = []
    probe_writable_dir(folder, what)
    try:
        for name in owned:
            path = folder / name
            if path.is_file() or path.is_symlink():
                path.unlink()
        (folder / MARKER).unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{what}: cannot remove the earlier dump ({e.strerror or e})") from None


class OwnedIRDumpDir(IRDumpDir):
    """IRDumpDir that records the files it writes in the folder's marker after each one."""

    def __init__(self, directory: Path) -> None:
        prepare_dump_dir(directory)
        super().__init__(directory)
        self._others = set(os.listdir(self.directory))  # survivors of an earlier run's folder
        self._record()

    def before_pass(self, index: int, p: Pass, model: ir.Model) -> None:
        super().before_pass(index, p, model)
        self._record()

    def after_pass(self, index: int, p: Pass, model: ir.Model, record: PassRecord) -> None:
        super().after_pass(index, p, model, record)
        self._record()

    def _record(self) -> None:
        mine = sorted(set(os.listdir(self.directory)) - self._others - {MARKER})
        (self.directory / MARKER).write_text(json.dumps({"files": mine}) + "\n")
