"""Every package folder ships: setup.py discovers them, under the import names pyproject maps."""

from __future__ import annotations

import runpy
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_setup_discovers_every_package_folder_under_its_mapped_name() -> None:
    setup = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_for_tests")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == setup["PACKAGE_DIRS"]
    found = set(setup["packages"](str(ROOT)))
    expected = set()
    for package, folder in setup["PACKAGE_DIRS"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "tests" in rel.parts or any(p.startswith((".", "_")) for p in rel.parts):
                continue
            expected.add(".".join([package, *rel.parts]))
    assert found == expected
    # The folders a new target or backend lands in are among them.
    assert {"sparsec.targets", "sparsec.backends.ort", "sparsec.passes.structural"} <= found


def test_required_layout_exists() -> None:
    for name in ("pyproject.toml", "sparsec", "passes", "backends", "kernels", "tests", "models_zoo"):
        assert (ROOT / name).exists(), name
