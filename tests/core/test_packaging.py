"""Every package folder must be listed in pyproject, or it silently drops out of the wheel."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
MAPPING = {"sparsec": "sparsec", "passes": "sparsec.passes", "backends": "sparsec.backends",
           "kernels": "sparsec.kernels", "models_zoo": "sparsec.models_zoo"}


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, package in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "tests" in rel.parts or any(p.startswith((".", "_")) for p in rel.parts):
                continue
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), f"package folders missing from pyproject: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject lists packages that do not exist: {sorted(listed - found)}"
    for folder, package in MAPPING.items():
        assert config["package-dir"][package] == folder


def test_required_layout_exists() -> None:
    for name in ("pyproject.toml", "sparsec", "passes", "backends", "kernels", "tests", "models_zoo"):
        assert (ROOT / name).exists(), name
