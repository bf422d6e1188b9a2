"""The N:M matmul as a TIR PrimFunc (backends/tvm/nm_tir.py) on sparsec's packed buffers:
numerics against PackedNM.to_dense(), alone and through the importer's `nm_lowering="tir"`
(3-D input with a symbolic batch, bias). No C kernels are linked: the TIR path needs none."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'sparsec[tvm]')")

from onnx import TensorProto, helper  # noqa: E402

from sparsec.backends.ort.sparse_ops import nm_matmul_node  # noqa: E402
from sparsec.backends.tvm.build import import_and_lift, relax_pipeline  # noqa: E402
from sparsec.backends.tvm.importer import import_onnx  # noqa: E402
from sparsec.backends.tvm.nm_tir import nm_matmul_primfunc, supports  # noqa: E402
from sparsec.backends.tvm.target_spec import host_spec  # noqa: E402
from sparsec.errors import UnsupportedError  # noqa: E402
from sparsec.kernels.packing_nm import pack_nm, prune_nm  # noqa: E402


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_primfunc_matches_dense(n: int) -> None:
    rng = np.random.default_rng(n)
    rows, k, cols = 3, 64, 48
    packed = pack_nm(prune_nm(rng.standard_normal((k, cols)).astype(np.float32), n, 4), n, 4)
    lib = tvm.compile(nm_matmul_primfunc(rows, k, cols, n), target=host_spec().tvm_target())
    x = rng.standard_normal((rows, k)).astype(np.float32)
    y = tvm.runtime.empty((rows, cols), "float32", tvm.cpu())
    lib(tvm.runtime.tensor(x), tvm.runtime.tensor(packed.values), tvm.runtime.tensor(packed.meta), y)
    assert _rel(x @ packed.to_dense(), y.numpy()) <= 1e-5


def test_supports_only_m4_and_whole_tiles() -> None:
    assert supports(2, 4, 32) and not supports(2, 8, 32) and not supports(2, 4, 40)
    with pytest.raises(ValueError):
        nm_matmul_primfunc(1, 64, 40, 2)


def _one_op_model(k: int, cols: int, bias: np.ndarray, batch: str | int = "b") -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(7)
    w = prune_nm(rng.standard_normal((k, cols)).astype(np.float32), 2, 4)
    node, inits = nm_matmul_node("x", "y", w, 2, 4, "nm", bias=bias)
    graph = helper.make_graph([node], "nm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, cols])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.sparsec.kernels", 1)])
    return model, w


@pytest.mark.parametrize("batch", ["b", 3])  # symbolic and static rows
def test_importer_tir_lowering_matches_dense(batch: str | int) -> None:
    from tvm import relax

    k, cols = 32, 32
    bias = np.linspace(-1, 1, cols).astype(np.float32)
    model, w = _one_op_model(k, cols, bias, batch)
    deploy, params = import_and_lift(model, nm_lowering="tir")
    assert "call_dps_packed" not in deploy.script() and "call_tir" in deploy.script()
    target = host_spec().tvm_target()
    vm = relax.VirtualMachine(tvm.compile(deploy, target, relax_pipeline=relax_pipeline(target)), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((3, 2, k)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(p) for p in params))
    assert _rel(x @ w + bias, out.numpy()) <= 1e-5


def test_importer_rejects_unknown_lowering() -> None:
    model, _ = _one_op_model(32, 32, np.zeros(32, np.float32))
    with pytest.raises(UnsupportedError, match="nm_lowering"):
        import_onnx(model, nm_lowering="cuda")
