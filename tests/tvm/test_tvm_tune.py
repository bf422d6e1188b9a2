"""`sparsec tune ARTIFACT --backend=tvm --trials N`: MetaSchedule on a tiny TVM artifact.

A 2-layer MatMul model, 4 trials: checks that the database is written into the artifact and
listed in its manifest, that the rebuilt model.so took at least one function from it, and that
its outputs still match ONNX Runtime on the same graph. Tens of seconds on a loaded 2-core
machine (TVM import, task extraction, 4 builds): marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'sparsec[tvm]')")
pytest.importorskip("psutil", reason="MetaSchedule needs psutil (pip install 'sparsec[tvm]')")

from sparsec.ir.io import save_model  # noqa: E402
from sparsec.kernels import kernels_available  # noqa: E402
from sparsec.runtime import load, make_session  # noqa: E402
from sparsec.testing import mlp_model  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec C kernels are not built")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsec.cli", *args], capture_output=True, text=True)


def _compile(src: Path, out: Path) -> None:
    done = _cli("compile", str(src), "--target=cpu", "--backend=tvm", "--sparsity=none", "--no-tune", "--no-bench",
                "-o", str(out))
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tvm_tune")
    src = folder / "two.onnx"
    save_model(mlp_model(4, (64, 64, 32), name="two"), src)
    _compile(src, folder / "out")
    return folder / "out"


@pytest.mark.slow
def test_tune_stores_database_and_rebuild_applies_it(artifact: Path) -> None:
    before = (artifact / "model.so").read_bytes()
    done = _cli("tune", str(artifact), "--backend=tvm", "--trials", "4", "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((artifact / "manifest.json").read_text())
    tuning = manifest["tvm_tuning"]
    assert tuning["trials"] == 4 and tuning["records"] >= 1
    for name in tuning["database"]:
        assert name in manifest["files"] and (artifact / name).stat().st_size > 0
    assert tuning["functions_from_database"] >= 1
    assert tuning["latency_ms_before"] > 0 and tuning["latency_ms_after"] > 0
    assert (artifact / "model.so").read_bytes() != before
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    ref = make_session((artifact / "model.onnx").read_bytes()).run(None, {"x": x})[0]
    got = load(artifact).run({"x": x})[0]
    assert float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))) <= 1e-4


def test_bad_trials_and_non_tvm_artifact_are_one_line_errors(tmp_path: Path) -> None:
    done = _cli("tune", str(tmp_path), "--backend=tvm", "--trials", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--trials" in done.stderr
    (tmp_path / "manifest.json").write_text(json.dumps({"backend": "ort", "files": []}))
    done = _cli("tune", str(tmp_path), "--backend=tvm", "--trials", "4")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "'ort' artifact" in done.stderr
    done = _cli("tune", "zoo:mlp", "--trials", "4")
    assert done.returncode == 2 and "--backend=tvm only" in done.stderr


@pytest.mark.slow
def test_recompile_into_a_tuned_artifact_applies_and_keeps_its_database(artifact: Path) -> None:
    if not (artifact / "tvm_ms_records.json").is_file():
        pytest.skip("needs the tuned artifact of the test above")
    records = (artifact / "tvm_ms_records.json").read_bytes()
    _compile(artifact.parent / "two.onnx", artifact)
    assert (artifact / "tvm_ms_records.json").read_bytes() == records
    assert "tvm_ms_records.json" in json.loads((artifact / "manifest.json").read_text())["files"]
    assert json.loads((artifact / "tvm_signature.json").read_text())["build"]["tuned_functions"] >= 1
