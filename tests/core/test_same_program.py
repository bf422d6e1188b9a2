"""An artifact that runs the dense model's own program (every layer on dense ops, only weight
values changed) is never judged slower than dense: its measured difference is noise."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.compiler import CompileOptions, compile_model
from sparsec.ir.program import same_model, same_program
from sparsec.pm import parse_pipeline
from sparsec.testing import make_model
from sparsec.verdict import judge

MLP = """<ir_version: 10, opset_import: ["" : 18]>
g (float[1, 64] x) => (float[1, 16] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}"""
MLP_EXTRA = MLP.replace("  y = MatMul(r, w2)", "  s = Sigmoid(r)\n  y = MatMul(s, w2)")


def _mlp(text: str = MLP, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    return make_model(text, w1=rng.standard_normal((64, 64)).astype(np.float32),
                      w2=rng.standard_normal((64, 16)).astype(np.float32))


def test_same_program_ignores_weight_values_not_ops() -> None:
    assert same_program(_mlp(seed=0), _mlp(seed=1))
    assert not same_program(_mlp(), _mlp(MLP_EXTRA))


def _manifest(**latency: object) -> dict:
    return {"fidelity": {"worst_cosine": 1.0}, "latency": {"measured": True, "speedup": 0.5, "noise": 0.01,
                                                           "compiled_ms": 2.0, "dense_ms": 1.0, **latency}}


def test_the_verdict_calls_only_a_different_program_slower() -> None:
    args = {"changed": True, "requested": True, "min_cosine": None, "real_samples": False}
    assert judge(_manifest(same_program_as_dense=False), **args).problems
    assert not judge(_manifest(same_program_as_dense=True), **args).problems


def test_a_compile_that_keeps_dense_ops_records_the_same_program() -> None:
    # 2:4 weights everywhere, layers under the kernels' fixed size threshold (tuning off): the
    # artifact runs dense MatMuls on pruned weights
    options = CompileOptions(pipeline=parse_pipeline("nm-sparsity{min_params=0}"), tune=False)
    result = compile_model(_mlp(), options)
    lat = result.manifest["latency"]
    assert lat["measured"] and not lat["identical_to_dense"] and lat["same_program_as_dense"]
    assert result.manifest["verdict"]["status"] != "failed"


def test_same_model_is_the_untouched_clone_only() -> None:
    model = _mlp()
    assert same_model(model.clone(), model)
    edited = model.clone()
    # the same values written into a new tensor: a pass replaced it, so it is no longer the input
    w1 = edited.graph.initializers["w1"]
    w1.const_value = ir.tensor(w1.const_value.numpy().copy(), name="w1")
    assert not same_model(edited, model)
    assert not same_model(_mlp(MLP_EXTRA), model)


def test_a_compile_that_changes_nothing_reuses_the_dense_outputs() -> None:
    # every layer under the pass's size threshold: the artifact is the input model
    options = CompileOptions(pipeline=parse_pipeline("nm-sparsity{min_params=100000}"), tune=False)
    fid = compile_model(_mlp(), options).manifest["fidelity"]
    assert fid["compiled_outputs"].startswith("the dense run's") and fid["worst_cosine"] > 1 - 1e-9
    pruned = CompileOptions(pipeline=parse_pipeline("nm-sparsity{min_params=0}"), tune=False)
    fid = compile_model(_mlp(), pruned).manifest["fidelity"]
    assert "compiled_outputs" not in fid and fid["worst_cosine"] < 1.0
