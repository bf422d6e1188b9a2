"""`--target=arm64 --backend=tvm`: the TVM aarch64 library, NEON kernels linked in, run under qemu.

Each model costs one TVM build and one cross link (seconds) plus qemu runs; the outputs of the
artifact's model.so under emulation must match the x86 run of the same compiled model (ONNX
Runtime with the x86 build of the same kernel sources).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsec.compiler import CompileOptions, compile_file, compile_model
from sparsec.errors import UnsupportedError
from sparsec.runtime import InferenceSession

EM_AARCH64 = 183


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def feeds_for(session: InferenceSession, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if "int64" in i.type:
            feeds[i.name] = (rng.integers(0, 100, shape) if "ids" in i.name else np.ones(shape)).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("model", ["zoo:digits_cnn", "tiny_bert"])
@pytest.mark.slow
def test_library_under_qemu_matches_x86(model: str, tvm_arm_runtime, request, tmp_path) -> None:
    from sparsec.backends.tvm_arm64.emulated import emulated_library

    spec = str(request.getfixturevalue("tiny_bert")) if model == "tiny_bert" else model
    out = tmp_path / "artifact"
    result = compile_file(spec, out, CompileOptions(target="arm64", backend="tvm", fidelity_samples=1))

    m = result.manifest
    assert (m["target"], m["backend"]) == ("arm64", "tvm-arm64")
    assert m["runtime_ops"] == ["NMSparseMatMul"]
    assert m["latency"] == {"measured": False, "reason": "not measured: aarch64 code runs only under qemu emulation on this machine"}
    assert "qemu" in m["fidelity"]["compiled"]
    assert m["fidelity"]["mean_cosine"] > 0.9
    for name in ("model.so", "sparsec_tvm_runner"):
        assert elf_machine(out / name) == EM_AARCH64
    build = json.loads((out / "tvm_build.json").read_text())
    assert build["tvm_target"]["mtriple"] == "aarch64-linux-gnu" and build["kernel_layers"] >= 1
    deploy = (out / "DEPLOY.md").read_text()
    assert "aarch64" in deploy and "relax.VirtualMachine" in deploy and "libtvm_runtime.so" in deploy

    x86 = InferenceSession(out)  # model.onnx with the x86 kernels
    names = [i.name for i in x86.get_inputs()]
    with emulated_library(out / "model.so") as lib:
        for seed, batch in ((5, 1), (6, 3)):
            if model == "tiny_bert" and batch != 1:
                continue  # static batch 1 export
            feeds = feeds_for(x86, batch, seed)
            expected = x86.run(None, feeds)
            got, median, fastest = lib.run([feeds[n] for n in names], repeat=2)
            assert len(got) == len(expected)
            for g, e in zip(got, expected, strict=True):
                assert g.shape == e.shape
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(np.abs(e).max()))
            assert 0 < fastest <= median
    if model == "zoo:digits_cnn":
        check_board_layout(out, tvm_arm_runtime, x86, tmp_path / "board")


def check_board_layout(out: Path, runtime: Path, x86: InferenceSession, board: Path) -> None:
    """DEPLOY.md's no-Python recipe: the artifact's runner and model.so next to the wheel's two
    libraries (found through the runner's $ORIGIN rpath, no LD_LIBRARY_PATH)."""
    import shutil

    from sparsec.kernels.pipe_runner import PipeRunner

    board.mkdir()
    for f in (out / "model.so", out / "sparsec_tvm_runner", runtime / "libtvm_runtime.so", runtime / "libtvm_ffi.so"):
        shutil.copy(f, board / f.name)
    (board / "sparsec_tvm_runner").chmod(0o755)
    feeds = feeds_for(x86, 2, seed=9)
    with PipeRunner([str(board / "sparsec_tvm_runner"), str(board / "model.so")]) as runner:
        (got,), _, _ = runner.run(list(feeds.values()))
    np.testing.assert_allclose(got, x86.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_op_without_tvm_lowering_is_refused_before_the_build(tvm_arm_runtime) -> None:
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from sparsec.ir.io import model_from_proto

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Celu", ["h"], ["y"], name="celu0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])], [w])
    model: ir.Model = model_from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    with pytest.raises(UnsupportedError, match=r"backend 'tvm-arm64' cannot run this model: op Celu \(node 'celu0'\) is not supported by TVM's ONNX frontend"):
        compile_model(model, CompileOptions(target="arm64", backend="tvm", fidelity_samples=1))
