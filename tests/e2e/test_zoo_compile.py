"""Every zoo model compiles with 2:4 into an artifact that ONNX Runtime runs (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sparsec.compiler import CompileOptions, compile_file
from sparsec.kernels import PackedNM
from sparsec.nm_pattern import nm_violations
from sparsec.numerics import sample_inputs
from sparsec.runtime import InferenceSession


def stored_weight(weights: dict[str, np.ndarray], attrs: dict[str, dict], name: str) -> tuple[np.ndarray, int | None]:
    """The pruned weight as stored: dense initializer, or unpacked from kernel format ([K, N])."""
    if name in weights:
        return weights[name], None
    a = attrs[name]
    packed = PackedNM.from_arrays(a["n"], a["m"], a["K"], a["N"], weights[f"{name}.nm_values"], weights[f"{name}.nm_meta"])
    return packed.to_dense(), 0

SMALL_ZOO = ["mlp", "resnet", "mobilenet", "bert", "gpt", "digits_cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_model_compiles_with_2_4(name, tmp_path) -> None:
    out = tmp_path / name
    # prune_all: this test is about the stored format of every pruned layer; by default the cpu
    # target prunes only layers measured faster here (tests/tune covers that choice).
    compile_file(f"zoo:{name}", out, CompileOptions(sparsity="2:4", fidelity_samples=2, prune_all=True))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["latency"]["dense_ms"] > 0 and manifest["latency"]["compiled_ms"] > 0
    f = manifest["fidelity"]
    # 2:4 changes the outputs (so the error is reported, not zero), and the worst row is no better than the mean.
    assert f["rel_l2"] > 0 and f["max_abs"] > 0 and f["worst_cosine"] <= f["mean_cosine"] < 1.0
    assert f["data"] == "random sample inputs" and f["samples"] == 2
    # A layer the tuner lowered reads "kernel NMSparseMatMul 2:4 (...)"; its stored values are checked too.
    pruned = [d for d in manifest["decisions"] if d["decision"] == "2:4" or d["decision"].startswith("kernel NMSparseMatMul 2:4 ")]
    assert pruned, "no layer was pruned"
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {
        n.input[1].removesuffix(".nm_values"): {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in model.graph.node
        if n.op_type == "NMSparseMatMul"
    }
    # Convs the tuner measured faster on the NCHWc kernel (AVX-512 machines) run in ORT's layout:
    # their weights are packed (at most 8 of 16 input channels kept per lane), BN fused by ORT.
    nchwc = [n for n in model.graph.node if n.op_type == "SparseConvNchwc"]
    assert set(manifest["runtime_ops"]) == ({"NMSparseMatMul"} if attrs else set()) | ({"SparseConvNchwc"} if nchwc else set())
    for n in nchwc:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        assert a["k"] <= 8 and weights[n.input[1]].max() < 16
    for d in pruned:
        if d["weight"] not in weights and d["weight"] not in attrs:  # a conv laid out by ORT
            assert nchwc, d["weight"]
            continue
        w, axis = stored_weight(weights, attrs, d["weight"])
        assert nm_violations(w, 2, 4, d["axis"] if axis is None else axis) == 0, d["weight"]
        assert np.count_nonzero(w) <= w.size // 2
    session = InferenceSession(out)
    from sparsec.ir.io import load_model

    feeds = sample_inputs(load_model(out / "model.onnx", check_ops=False))
    outputs = session.run(None, feeds)
    assert all(np.isfinite(o).all() for o in outputs)
