"""Every zoo model compiles with 2:4 into an artifact that ONNX Runtime runs (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sparsec.compiler import CompileOptions, compile_file
from sparsec.nm_pattern import nm_violations

SMALL_ZOO = ["mlp", "resnet", "mobilenet", "bert", "gpt", "digits_cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_model_compiles_with_2_4(name, tmp_path) -> None:
    out = tmp_path / name
    compile_file(f"zoo:{name}", out, CompileOptions(sparsity="2:4", fidelity_samples=2))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["latency"]["dense_ms"] > 0 and manifest["latency"]["compiled_ms"] > 0
    assert -1.0 <= manifest["fidelity"]["cosine"] <= 1.0 and manifest["fidelity"]["max_abs"] >= 0
    pruned = [d for d in manifest["decisions"] if d["decision"] == "2:4"]
    assert pruned, "no layer was pruned"
    model = onnx.load(out / "model.onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for d in pruned:
        w = weights[d["weight"]]
        assert nm_violations(w, 2, 4, d["axis"]) == 0, d["weight"]
        assert np.count_nonzero(w) <= w.size // 2
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()
