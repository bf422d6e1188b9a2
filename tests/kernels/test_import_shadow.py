"""Python started in the repository root finds the `kernels/` folder as a top-level `kernels`
package first; it must hand that name to the installed PyPI package (Hugging Face's, which
transformers imports), or transformers fails there (`python -m pytest` did)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_top_level_kernels_from_the_repo_root_is_the_installed_package() -> None:
    done = _run("import kernels, sparsec.kernels as k; print(kernels.__file__); print(k.__file__); print(k.pack_nm.__name__)")
    if _installed("kernels"):
        assert done.returncode == 0, done.stderr
        top, ours, fn = done.stdout.split()
        assert Path(top).resolve().parent != ROOT / "kernels"
        assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py" and fn == "pack_nm"
    else:  # nothing installed under that name: the plain import error, not our package
        assert done.returncode != 0 and "No module named 'kernels'" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or not _installed("kernels"),
                    reason="needs transformers with Hugging Face's kernels package")
def test_transformers_hub_kernels_imports_from_the_repo_root() -> None:
    done = _run("import transformers.integrations.hub_kernels as h; print(h.__name__)")
    assert done.returncode == 0, done.stderr[-2000:]
