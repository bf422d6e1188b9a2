"""ONNX Runtime integration: models with NMSparseMatMul / BlockSparseMatMul run through
make_session and equal the dense product on the same masked weights."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from sparsec import kernels as sk

from .conftest import assert_matches

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")
sparse_ops = pytest.importorskip("sparsec.backends.ort.sparse_ops")


def _model(nodes, inits, k: int):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(sparse_ops.PYOP_DOMAIN, 1)])


def test_two_layer_mlp_matches_dense(rng: np.random.Generator) -> None:
    w1 = sk.prune_nm(rng.standard_normal((64, 48)), 2, 4)
    w2 = sk.prune_block(rng.standard_normal((48, 21)), 0.25, 4)
    n1, i1 = sparse_ops.nm_matmul_node("x", "h", w1, 2, 4, "fc1")
    n2, i2 = sparse_ops.block_matmul_node("r", "y", w2, 4, "fc2")
    relu = helper.make_node("Relu", ["h"], ["r"])  # a dense ORT op between the sparse ones
    session = sparse_ops.make_session(_model([n1, relu, n2], i1 + i2, 64), threads=2)
    for batch in (1, 5, 33):
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        hidden = np.maximum(x.astype(np.float64) @ w1, 0)
        assert_matches(y, hidden, w2)


def test_three_d_input(rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((32, 17)), 1, 8)
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 1, 8, "fc")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "S", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(sparse_ops.PYOP_DOMAIN, 1)])
    x = rng.standard_normal((2, 7, 32)).astype(np.float32)
    (y,) = sparse_ops.make_session(model).run(None, {"x": x})
    assert y.shape == (2, 7, 17)
    assert_matches(y.reshape(-1, 17), x.reshape(-1, 32), w)


def test_malformed_packed_initializer_is_rejected(rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((16, 16)), 2, 4)
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 2, 4, "fc")
    inits[1].dims[0] -= 1  # meta one word short
    inits[1].raw_data = inits[1].raw_data[:-2]
    with pytest.raises(sk.PackedFormatError):
        sparse_ops.make_session(_model([node], inits, 16))


def test_registry_entries_die_with_the_session(rng: np.random.Generator) -> None:
    import gc

    w = sk.prune_nm(rng.standard_normal((16, 16)), 2, 4)
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 2, 4, "fc")
    before = len(sparse_ops._REGISTRY)
    session = sparse_ops.make_session(_model([node], inits, 16))
    assert len(sparse_ops._REGISTRY) == before + 1
    del session
    gc.collect()
    assert len(sparse_ops._REGISTRY) == before
