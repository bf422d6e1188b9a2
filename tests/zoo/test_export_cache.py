"""`zoo:NAME` exports once per cache: the second load reads the file the first one wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest

from sparsec import zoo_exports
from sparsec.models_zoo import UnknownModelError, export_ir
from sparsec.models_zoo import export as zoo_export
from sparsec.models_zoo.cache import cache_dir
from sparsec.testing import mlp_model


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Not the session's shared zoo folder: these tests count the files in it."""
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path))


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}


def test_second_load_reads_the_cached_export(monkeypatch: pytest.MonkeyPatch) -> None:
    first = zoo_export.cached_export_ir("mlp")
    files = list((cache_dir() / "exports").glob("mlp-*.onnx"))
    assert len(files) == 1 and not list((cache_dir() / "exports").glob("*.tmp"))

    def no_export(*args: object, **kwargs: object) -> ir.Model:
        raise AssertionError("exported again although the cache holds this export")

    monkeypatch.setattr(zoo_export, "export_ir", no_export)
    second = zoo_export.cached_export_ir("mlp")
    assert second.metadata_props["sparsec.zoo.model"] == "mlp"
    fresh = export_ir("mlp")
    assert [n.op_type for n in second.graph] == [n.op_type for n in fresh.graph]
    w1, w2, w3 = _weights(first), _weights(second), _weights(fresh)
    assert w1.keys() == w2.keys() == w3.keys()
    assert all(np.array_equal(w2[k], w3[k]) for k in w3)


def test_other_shapes_and_sources_get_their_own_file(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def small_export(name: str, batch: int = 1, opset: int = 18, dynamic: bool | None = None) -> ir.Model:
        calls.append((name, batch, opset, dynamic))  # the cache logic, without a torch export each time
        return mlp_model(2, (8, 4), name=name)

    monkeypatch.setattr(zoo_export, "export_ir", small_export)
    for _ in range(2):
        zoo_export.cached_export_ir("mlp")
        zoo_export.cached_export_ir("mlp", opset=17)
        zoo_export.cached_export_ir("mlp", batch=4, dynamic=False)
    assert len(calls) == 3 and len(list((cache_dir() / "exports").glob("mlp-*.onnx"))) == 3
    # A change to the zoo's or the capture's source is a new key (the export may differ).
    monkeypatch.setattr(zoo_exports, "export_key", lambda: "0" * 16)
    zoo_export.cached_export_ir("mlp")
    assert len(calls) == 4 and len(list((cache_dir() / "exports").glob("mlp-*.onnx"))) == 4


def test_unknown_name_makes_no_file() -> None:
    with pytest.raises(UnknownModelError):
        zoo_export.cached_export_ir("no_such_model")
    assert not (cache_dir() / "exports").exists()


def test_cached_zoo_spec_loads_without_torch(tmp_path) -> None:  # noqa: ANN001
    """A compile of a cached `zoo:NAME` does not pay torch's import (~1.6 s) to find the file."""
    zoo_export.cached_export_ir("mlp")
    code = ("import sys; from sparsec.capture import load_any; m, _ = load_any('zoo:mlp'); "
            "print('torch' in sys.modules, m.metadata_props['sparsec.zoo.model'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPARSEC_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "mlp"]
