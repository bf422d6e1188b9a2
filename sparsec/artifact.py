"""Artifact folders: sparsec writes only where it owns what it replaces.

A folder is sparsec's to write when it is absent, empty, or an artifact: it holds a
`manifest.json` written by sparsec whose `files` list names the files the artifact owns.
In an artifact folder sparsec replaces only those files (each atomically, the manifest last)
and removes only owned files the new artifact no longer has; anything else there (a
subfolder, the user's notes) is left alone. Any other non-empty folder is an error naming its
first entry, unless `force`: then sparsec writes its files next to what is there (a file of
the same name is replaced) and still removes nothing it did not write.

An absent or empty folder is filled in one step: the files are written to a temporary
sibling that is then renamed into place, so the artifact is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsec.errors import OutputError
from sparsec.output_files import dir_mode, nearest_existing, probe_writable_dir

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class OutputPlan:
    """What is in an output folder before sparsec writes to it."""

    path: Path
    exists: bool
    owned: frozenset[str]  # files of the sparsec artifact already there (manifest included)
    foreign: tuple[str, ...]  # every other entry, sorted; never removed or changed


def _plain_name(name: str) -> bool:
    # A manifest is data: a crafted `files` entry must never reach outside the folder.
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def artifact_files(folder: Path) -> set[str] | None:
    """The files the sparsec artifact in `folder` owns, or None when it holds no sparsec manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "sparsec_version" not in data or not isinstance(data.get("files"), list):
        return None
    return {MANIFEST} | {f for f in data["files"] if isinstance(f, str) and _plain_name(f)}


def check_output_dir(out: Path, *, force: bool = False) -> OutputPlan:
    """Fail fast, before any work, unless sparsec may write the artifact folder `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a directory")
    if out.is_dir():
        entries = sorted(os.listdir(out))
        owned = artifact_files(out)
        if owned is None:
            if entries and not force:
                raise OutputError(
                    f"output directory {out} is not empty and holds no sparsec artifact (first entry: "
                    f"'{entries[0]}'); choose a new or empty folder, or pass --force to write the artifact "
                    "next to what is there"
                )
            owned = set()
        probe_writable_dir(out, f"output directory {out}")
        return OutputPlan(out, True, frozenset(owned), tuple(e for e in entries if e not in owned))
    # Missing parent folders are created when the artifact is written; the nearest existing
    # ancestor must be a folder we can create entries in.
    ancestor = nearest_existing(out)
    if not ancestor.is_dir():
        raise OutputError(f"cannot write output directory {out}: {ancestor} is not a directory")
    probe_writable_dir(ancestor, f"output directory {out}")
    return OutputPlan(out, False, frozenset(), ())


def write_artifact(out: Path, files: dict[str, bytes | Path], *, force: bool = False) -> Path:
    """Write `files` (plain names -> bytes, or a staged file to move in) as the artifact folder `out`."""
    out = Path(out)
    bad = [name for name in files if not _plain_name(name)]
    if bad:
        raise ValueError(f"artifact file names must be plain names, got {bad[0]!r}")
    plan = check_output_dir(out, force=force)
    if not plan.exists or not (plan.owned or plan.foreign):
        _write_new(out, files)
    else:
        _replace_owned(plan, files)
    return out


def _write_new(out: Path, files: dict[str, bytes | Path]) -> None:
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write output directory {out}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, dir_mode())
        for name, data in files.items():
            _put(tmp / name, data)
        # rename() onto an empty folder replaces it; one that filled up meanwhile fails.
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only
        raise OutputError(f"cannot write output directory {out}: {e.strerror or e}") from None


def _replace_owned(plan: OutputPlan, files: dict[str, bytes | Path]) -> None:
    out = plan.path
    clash = [name for name in files if name in plan.foreign and (out / name).is_dir()]
    if clash:
        raise OutputError(f"cannot write output directory {out}: '{clash[0]}' is a folder there")
    try:
        stage = Path(tempfile.mkdtemp(prefix=".sparsec-staging-", dir=out))
    except OSError as e:
        raise OutputError(f"cannot write output directory {out}: {e.strerror or e}") from None
    try:
        # Every byte is written before anything in `out` changes; then renames only.
        for name, data in files.items():
            _put(stage / name, data)
        for name in files:
            if name != MANIFEST:
                os.replace(stage / name, out / name)
        # Owned files the new artifact lacks (an old plot): removed before the new manifest,
        # so an interruption never leaves a file that no manifest claims.
        for name in sorted(plan.owned - set(files) - {MANIFEST}):
            path = out / name
            if path.is_file() or path.is_symlink():
                path.unlink()
        if MANIFEST in files:
            os.replace(stage / MANIFEST, out / MANIFEST)
    except OSError as e:
        raise OutputError(f"cannot write output directory {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # our own staging folder only


def _put(dest: Path, data: bytes | Path) -> None:
    """Bytes are written; a Path (a large file staged on disk, e.g. external weights) is moved."""
    if isinstance(data, Path):
        shutil.move(str(data), dest)
    else:
        dest.write_bytes(data)


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()
