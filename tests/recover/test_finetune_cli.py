"""`sparsec finetune`: rewrites an artifact with fine-tuned weights; bad input is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from sparsec.ir.io import save_model
from sparsec.runtime import KERNEL_DOMAIN

from .conftest import correlated


def sparsec(*args: str):  # noqa: ANN202
    return subprocess.run([sys.executable, "-m", "sparsec.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_finetune_rewrites_the_artifact(tmp_path, mlp):  # noqa: ANN001
    src = tmp_path / "mlp.onnx"
    save_model(mlp, src)
    out = tmp_path / "art"
    r = sparsec("-q", "compile", str(src), "--sparsity=2:4", "--prune-all", "--no-bench", "-o", str(out))
    assert r.returncode == 0, r.stderr
    before = onnx.load(out / "model.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=correlated(128, 16, seed=1))
    val = tmp_path / "val.npz"
    np.savez(val, x=correlated(32, 16, seed=5))
    r = sparsec("finetune", str(out), "--calib", str(data), "--val", str(val), "--steps", "20", "--lr", "0.003")
    assert r.returncode == 0, r.stderr
    assert "held-out cosine vs dense" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recovery"]["steps_run"] > 0 and "recovery.png" in manifest["files"]
    assert manifest["recovery"]["validation"].startswith("32 separate samples")
    assert (out / "recovery.png").is_file()
    after = onnx.load(out / "model.onnx")
    # Lowered again the same way (kernel ops where the backend chose them, else dense ops).
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    old = {i.name: onnx.numpy_helper.to_array(i) for i in before.graph.initializer}
    new = {i.name: onnx.numpy_helper.to_array(i) for i in after.graph.initializer}
    assert new.keys() == old.keys()
    pruned = [n for n, w in old.items() if w.dtype == np.float32 and w.ndim == 2 and (w == 0).mean() >= 0.5]
    assert pruned or any(n.domain == KERNEL_DOMAIN for n in after.graph.node)
    for name in pruned:  # every pruned entry stays zero, every group of 4 keeps <= 2 nonzeros
        np.testing.assert_array_equal(new[name][old[name] == 0], 0.0)
        assert (np.count_nonzero(np.moveaxis(new[name], 0, -1).reshape(-1, 4), axis=1) <= 2).all()
    assert any(not np.array_equal(new[n], old[n]) for n in old)  # trained


def test_missing_artifact_is_one_line(tmp_path):  # noqa: ANN001
    data = tmp_path / "c.npz"
    np.savez(data, x=np.zeros((4, 16), np.float32))
    r = sparsec("finetune", str(tmp_path / "nope"), "--calib", str(data))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such artifact" in r.stderr


def test_bad_npz_is_one_line(tmp_path, mlp):  # noqa: ANN001
    art = tmp_path / "art"
    art.mkdir()
    save_model(mlp, art / "model.onnx")
    (art / "manifest.json").write_text(json.dumps({"files": ["model.onnx", "manifest.json"], "target": "cpu"}))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = sparsec("finetune", str(art), "--calib", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "calibration file" in r.stderr
    r = sparsec("finetune", str(art), "--calib", str(tmp_path / "missing.npz"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=np.zeros((4, 16), np.float32))
    r = sparsec("finetune", str(art), "--calib", str(wrong), "--teacher", str(art / "model.onnx"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "do not match" in r.stderr
