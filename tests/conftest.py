"""Every test gets its own sparsec cache folder, so no result comes from an earlier run.

Disk caches (the sensitivity tables, ...) would otherwise let a test pass on a warm cache
without running the code under test. The zoo's trained weights and exports are deterministic
and slow to make, so one zoo folder is shared by the tests of a session (never ~/.cache).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zoo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's cache root whose `zoo/` holds trained zoo weights and exports."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one folder for all workers of the run (writes are atomic)
        base = base.parent
    root = base / "zoo_cache"
    (root / "zoo").mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $SPARSEC_CACHE_DIR for this test (subprocesses inherit it)."""
    root = tmp_path_factory.mktemp("cache")
    (root / "zoo").symlink_to(zoo_cache_dir / "zoo", target_is_directory=True)
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(root))
    # The tuner's per-CPU cache (sparsec.tune) lives under $XDG_CACHE_HOME: fresh per test too,
    # and short measurements (tests tune tiny shapes; the verdicts they check are not about speed).
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg"))
    monkeypatch.setenv("SPARSEC_TUNE_BUDGET_S", "0.05")
    monkeypatch.setenv("SPARSEC_BENCH_BUDGET_S", "0.3")
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding `slow` tests run first (each file's own order kept): with two xdist
    workers taking one file at a time (`make test`), a long file collected last kept one worker
    busy for minutes while the other had nothing left."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
