"""Writing single output files: checked before any work, replaced atomically, usual permissions.

`tempfile` creates files 0600 and folders 0700; what sparsec leaves behind for the user gets
the modes a plain `open()`/`mkdir` would give under the process umask (0644/0755 under 022).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from sparsec.errors import OutputError

_umask_lock = threading.Lock()


def current_umask() -> int:
    # os.umask can only be read by setting it; the lock keeps threads of this process from
    # creating files in the short window where it is 0.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def probe_writable_dir(folder: Path, what: str) -> None:
    """Create and remove a temporary folder in `folder`, the only test that root, read-only
    mounts and pseudo file systems (/proc) all answer truthfully."""
    try:
        probe = tempfile.mkdtemp(prefix=".sparsec-probe-", dir=folder)
        os.rmdir(probe)
    except OSError as e:
        raise OutputError(f"cannot write {what}: {folder} is not writable ({e.strerror or e})") from None


def nearest_existing(path: Path) -> Path:
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def check_file_writable(path: Path) -> None:
    """Fail before any work if the file `path` cannot be written (its folder must exist)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output path {path} is a directory, expected a file name")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    probe_writable_dir(parent, str(path))


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, then rename it over `path`."""
    path = Path(path)
    parent = path.absolute().parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
