"""`--target=cuda`: the registered target, the ort-gpu artifact and its emulated-precision fidelity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.backends import get_backend
from sparsec.backends.ort_gpu.backend import is_2_4
from sparsec.backends.ort_gpu.precision import emulate_precision, round_weight
from sparsec.cli.main import main
from sparsec.errors import OptionError
from sparsec.kernels.packing_sparse_tc import round_to
from sparsec.targets import get_target


def test_cuda_target_defaults_and_archs() -> None:
    t = get_target("cuda")
    assert t.arch == "sm_80" and t.backend == "ort-gpu" and t.channel_multiple == 64
    assert t.accelerates("nm") and t.accelerates_nm(2, 4, 64) and not t.accelerates_nm(2, 4, 48)
    assert not t.accelerates_nm(1, 8, 64) and not t.measured_here
    h100 = get_target("cuda:sm_90")
    assert h100.peak_gflops > t.peak_gflops and h100.dram_gbps > t.dram_gbps
    assert get_backend(t.backend).name == "ort-gpu"


def test_bad_arch_is_one_line_error() -> None:
    with pytest.raises(OptionError, match=r"no variant 'sm_70' \(known: sm_80, sm_89, sm_90\)"):
        get_target("cuda:sm_70")
    with pytest.raises(OptionError, match=r"target 'cpu' has no variant 'sm_80'"):
        get_target("cpu:sm_80")


def test_cli_rejects_arch_for_cpu(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compile", "zoo:mlp", "--target=cpu", "--arch=sm_80", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("sparsec: error: target 'cpu' has no variant") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _matmul_model(w: np.ndarray) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, w.shape[1]])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_emulate_precision_rounds_weights_inputs_and_outputs() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(emulate_precision(_matmul_model(w)), opts, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    expected = round_to(round_to(x, "float16") @ round_to(w, "float16"), "float16")
    assert np.allclose(y, expected, rtol=0, atol=1e-6)
    assert not np.allclose(y, x @ w, rtol=0, atol=1e-6)  # the rounding is really there
    assert [o.name for o in onnx.load_from_string(emulate_precision(_matmul_model(w))).graph.output] == ["y"]


def test_is_2_4_along_axis() -> None:
    w = np.zeros((8, 4), dtype=np.float32)
    w[[0, 1, 4, 6], :] = 1.0
    assert is_2_4(w, 0) and is_2_4(w.T.copy(), 1)
    w[2, 1] = 1.0  # three nonzeros in the first group of column 1
    assert not is_2_4(w, 0) and is_2_4(w, 1) is False


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compile_cuda_artifact(tmp_path, arch: str) -> None:
    out = tmp_path / "out"
    assert main(["compile", "zoo:mlp", "--target=cuda", f"--arch={arch}", "--sparsity=2:4", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == f"cuda:{arch}" and manifest["backend"] == "ort-gpu"
    assert manifest["latency"] == {"measured": False, "reason": "not measured: no CUDA device"}
    assert "fp16 rounding" in manifest["fidelity"]["compiled"]
    assert "ort_session.json" in manifest["files"]
    config = json.loads((out / "ort_session.json").read_text())
    names = [p[0] for p in config["providers"]]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert config["providers"][0][1]["trt_sparsity_enable"] is True
    assert config["target"]["arch"] == arch
    model = onnx.load(out / "model.onnx")
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # standard ONNX only
    # The first layer's K=784 is not a multiple of the sparse tile (32): TensorRT would run it
    # dense, so nm-sparsity leaves it dense instead of losing accuracy for nothing.
    assert [(x["layer"], x["sparsity"]) for x in manifest["layers"]] == [
        ("node_linear", "dense"), ("node_linear_1", "2:4"), ("node_linear_2", "2:4")]
    assert any("not a multiple of the target's tile 32" in d.get("reason", "") for d in manifest["decisions"])
    assert config["sparse_tensor_core_layers"] == ["node_linear_1", "node_linear_2"]
    assert config["dense_layers"] == {"node_linear": "K=784 is not a multiple of 32"}
    # What the user runs: the artifact as is, on ORT (CPU EP here), matching the emulated fidelity.
    providers = [p for p in config["providers"] if p[0] in ort.get_available_providers()]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=[(n, o) for n, o in providers])
    feed = {i.name: np.random.default_rng(1).standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input}
    (y,) = sess.run(None, feed)
    assert np.all(np.isfinite(y))
    assert 0.5 < manifest["fidelity"]["worst_cosine"] <= 1.0


def test_emulated_weights_clamp_to_the_fp16_range() -> None:
    """A mask fill value of float32's minimum (both exporters write one) becomes -65504 as
    TensorRT clamps it, not -inf; infinities written as such stay infinite."""
    w = np.array([-3.4028235e38, 1e5, 1.0 + 2**-12, -np.inf, 70000.0], dtype=np.float32)
    assert round_weight(w).tolist() == [-65504.0, 65504.0, 1.0, -np.inf, 65504.0]
    assert np.isneginf(round_to(w, "bfloat16")[0])  # float32's minimum rounds past bf16's largest
    bf16 = round_weight(w, "bfloat16")
    assert np.isfinite(bf16[0]) and bf16[0] < -3.38e38 and bf16[1:].tolist() == [99840.0, 1.0, -np.inf, 70144.0]
