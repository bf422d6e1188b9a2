"""Every file sparsec writes, sparsec reads (inspect) and runs (sparsec.runtime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from sparsec.backends.ort.sparse_ops import block_matmul_node, nm_matmul_node
from sparsec.cli.kernel_view import raise_kernel_ops
from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import model_bytes
from sparsec.kernels import prune_block, prune_nm
from sparsec.numerics import make_session
from sparsec.runtime import KERNEL_DOMAIN, InferenceSession

from .helpers import run, write_deep_chain, write_mlp, write_wide_mlp


def test_inspect_reads_an_artifact_with_kernel_ops(capsys, tmp_path) -> None:
    model = write_wide_mlp(tmp_path)
    out = tmp_path / "art"
    rc, _, err = run(capsys, ["compile", str(model), "-o", str(out), "--no-bench", "--no-tune", "--min-cosine=-1"])
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["runtime_ops"] == ["NMSparseMatMul"]
    for target in (out, out / "model.onnx"):
        rc, text, err = run(capsys, ["inspect", str(target)])
        assert rc == 0, err
        assert "2 sparsec kernel ops are shown" in text and text.count(" 2:4 ") == 2
    rc, text, _ = run(capsys, ["inspect", str(out), "--json"])
    report = json.loads(text)
    assert report["kernel_ops"] == 2 and [layer["sparsity"] for layer in report["layers"]] == ["2:4", "2:4"]
    assert report["totals"]["effective_macs"] == report["totals"]["macs"] // 2
    rc, text, _ = run(capsys, ["inspect", str(out), "--ir"])  # as stored
    assert rc == 0 and f"{KERNEL_DOMAIN}.NMSparseMatMul" in text


def _kernel_model(node: onnx.NodeProto, inits: list[onnx.TensorProto], k: int, n: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", 1, [3, k])], [helper.make_tensor_value_info("y", 1, [3, n])], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(KERNEL_DOMAIN, 1)])


def test_raised_kernel_ops_compute_the_same_layer() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    w_nm = prune_nm(rng.standard_normal((64, 48)).astype(np.float32), 2, 4)
    w_block = prune_block(rng.standard_normal((64, 48)).astype(np.float32), 0.25, 4)
    cases = [
        (nm_matmul_node("x", "y", w_nm, 2, 4, "nm", bias=bias), w_nm, "NMSparse"),
        (block_matmul_node("x", "y", w_block, 4, "blk"), w_block, "Sparse"),
    ]
    for (node, inits), w, marker in cases:
        model = ir.serde.deserialize_model(_kernel_model(node, inits, 64, 48))
        assert raise_kernel_ops(model) == 1
        assert [n.op_type for n in model.graph][:2] == [marker, "MatMul"]
        lower_to_reference(model)
        got = make_session(model_bytes(model)).run(None, {"x": x})[0]
        want = x @ w + (bias if marker == "NMSparse" else 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_inspect_reads_zoo_names_and_opt_outputs(capsys, tmp_path) -> None:
    rc, text, err = run(capsys, ["inspect", "zoo:mlp", "--json"])
    assert rc == 0, err
    assert len(json.loads(text)["layers"]) == 3
    model = write_mlp(tmp_path)
    assert run(capsys, ["opt", str(model), "-p", "nm-sparsity", "-o", str(tmp_path / "s.onnx")])[0] == 0
    rc, text, _ = run(capsys, ["inspect", str(tmp_path / "s.onnx")])
    assert rc == 0 and text.count(" 2:4 ") == 2
    rc, _, err = run(capsys, ["inspect", str(tmp_path)])  # a folder that is no artifact
    assert rc == 2 and "without model.onnx" in err


def test_runtime_runs_opt_outputs_through_the_reference_lowering(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    sparse = tmp_path / "s.onnx"
    assert run(capsys, ["opt", str(model), "-p", "nm-sparsity{n=1 m=4}", "-o", str(sparse)])[0] == 0
    proto = onnx.load(sparse)
    assert any(n.domain == "com.sparsec" for n in proto.graph.node)
    w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    y = InferenceSession(sparse).run(None, {"x": x})[0]
    want = np.maximum(x @ w["w1"].T + w["b1"], 0) @ w["w2"]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    assert np.count_nonzero(w["w2"]) == w["w2"].size // 4  # it really is the pruned model


def test_inspect_json_into_head_ends_quietly(tmp_path) -> None:
    model = write_deep_chain(tmp_path, 600)  # JSON far larger than a pipe's buffer
    script = f"{sys.executable} -m sparsec.cli inspect {model} --json | head -n 2; echo ${{PIPESTATUS[0]}} > {tmp_path}/rc"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.stdout.splitlines() == ["{", '  "target": "cpu",'], proc.stdout
    assert proc.stderr == "", proc.stderr
    assert (tmp_path / "rc").read_text().strip() == "141"  # 128 + SIGPIPE, quietly
