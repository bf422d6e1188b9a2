"""ONNX Runtime integration: the native custom ops (NMSparseMatMul / BlockSparseMatMul in
com.sparsec.kernels) run through a real session and equal the dense product on the same
masked weights; malformed packed weights fail at session creation with a clear message."""

from __future__ import annotations

import ctypes
import glob
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec import kernels as sk
from sparsec.kernels import _native

from .conftest import assert_matches

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")
sparse_ops = pytest.importorskip("sparsec.backends.ort.sparse_ops")

BATCHES = (1, 2, 17, 64, 257)


def _model(nodes, inits, inputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits
    )
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(sparse_ops.KERNEL_DOMAIN, 1)])


def _check_batches(session: ort.InferenceSession, w: np.ndarray, rng: np.random.Generator) -> None:
    k = w.shape[0]
    for batch in BATCHES:
        x = rng.standard_normal((batch, k)).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert_matches(y, x, w)
    x3 = rng.standard_normal((3, 5, k)).astype(np.float32)  # [..., K] -> [..., N]
    (y3,) = session.run(None, {"x": x3})
    assert y3.shape == (3, 5, w.shape[1])
    assert_matches(y3.reshape(-1, w.shape[1]), x3.reshape(-1, k), w)


def test_abi_slots_match_the_installed_runtime() -> None:
    """The OrtApi slot numbers in kernels/src/sk_ort_abi.h agree with this ONNX Runtime."""
    found = glob.glob(str(Path(ort.__file__).parent / "capi" / "libonnxruntime.so*"))
    if not found:
        pytest.skip("this onnxruntime wheel ships no libonnxruntime.so")
    runtime = ctypes.CDLL(found[0])
    runtime.OrtGetApiBase.restype = ctypes.c_void_p
    lib = _native.load()
    lib.sk_ort_abi_selftest.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    msg = ctypes.create_string_buffer(256)
    assert lib.sk_ort_abi_selftest(runtime.OrtGetApiBase(), msg, 256) == 0, msg.value
    assert msg.value.decode() == ort.__version__.split("+")[0]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 8), (2, 8), (2, 16), (5, 16)])
def test_nm_op_matches_dense(n: int, m: int, rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((6 * m, 37)), n, m)  # N not a multiple of 16
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, n, m, "fc")
    _check_batches(sparse_ops.make_session(_model([node], inits)), w, rng)


@pytest.mark.parametrize("bk", [1, 4, 16])
def test_block_op_matches_dense(bk: int, rng: np.random.Generator) -> None:
    w = sk.prune_block(rng.standard_normal((64, 45)), 0.2, bk)
    node, inits = sparse_ops.block_matmul_node("x", "y", w, bk, "fc")
    _check_batches(sparse_ops.make_session(_model([node], inits)), w, rng)


@pytest.mark.parametrize("kind", ["nm", "block"])
def test_bias_input_is_added_to_every_row(kind: str, rng: np.random.Generator) -> None:
    if kind == "nm":
        w = sk.prune_nm(rng.standard_normal((32, 37)), 2, 4)
        node, inits = sparse_ops.nm_matmul_node("x", "y", w, 2, 4, "fc", bias=rng.standard_normal(37))
    else:
        w = sk.prune_block(rng.standard_normal((32, 37)), 0.25, 4)
        node, inits = sparse_ops.block_matmul_node("x", "y", w, 4, "fc", bias=rng.standard_normal(37))
    bias = numpy_helper.to_array(inits[-1]).astype(np.float64)
    session = sparse_ops.make_session(_model([node], inits))
    for shape in ((1, 32), (70, 32), (2, 3, 32)):
        x = rng.standard_normal(shape).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        ref = x.astype(np.float64) @ w + bias
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_bias_of_the_wrong_length_is_rejected(rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((32, 37)), 2, 4)
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 2, 4, "fc", bias=np.zeros(36))
    with pytest.raises(sk.PackedFormatError, match="bias has 36 values, expected N=37"):
        sparse_ops.make_session(_model([node], inits))


def test_every_isa_path(isa: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sk.ENV_ISA, isa)  # read by the library when the session is created
    w = sk.prune_nm(rng.standard_normal((64, 40)), 2, 4)
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 2, 4, "fc")
    _check_batches(sparse_ops.make_session(_model([node], inits)), w, rng)


def test_two_layer_mlp_with_a_dense_op_between(rng: np.random.Generator) -> None:
    w1 = sk.prune_nm(rng.standard_normal((64, 48)), 2, 4)
    w2 = sk.prune_block(rng.standard_normal((48, 21)), 0.25, 4)
    n1, i1 = sparse_ops.nm_matmul_node("x", "h", w1, 2, 4, "fc1")
    n2, i2 = sparse_ops.block_matmul_node("r", "y", w2, 4, "fc2")
    relu = helper.make_node("Relu", ["h"], ["r"])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])]
    session = sparse_ops.make_session(_model([n1, relu, n2], i1 + i2, inputs), threads=2)
    for batch in (1, 5, 33):
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert_matches(y, np.maximum(x.astype(np.float64) @ w1, 0), w2)


@pytest.mark.parametrize("kernel_threads", [0, 1, 2])
def test_kernel_thread_caps_agree(kernel_threads: int, rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((512, 256)), 1, 4)  # 257 rows: several threads' worth
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 1, 4, "fc")
    session = sparse_ops.make_session(_model([node], inits), kernel_threads=kernel_threads)
    x = rng.standard_normal((257, 512)).astype(np.float32)
    assert_matches(session.run(None, {"x": x})[0], x, w)


def test_bad_thread_cap_is_rejected_at_registration() -> None:
    with pytest.raises(Exception, match="sparsec.kernel_threads"):
        sparse_ops.session_options(kernel_threads=-1)


def _nm_case(rng: np.random.Generator, n: int = 2, m: int = 4):
    w = sk.prune_nm(rng.standard_normal((16, 20)), n, m)
    return sparse_ops.nm_matmul_node("x", "y", w, n, m, "fc")


def _set(init: onnx.TensorProto, array: np.ndarray) -> None:
    init.CopyFrom(numpy_helper.from_array(array, init.name))


def test_short_meta_is_rejected_at_session_creation(rng: np.random.Generator) -> None:
    node, inits = _nm_case(rng)
    _set(inits[1], numpy_helper.to_array(inits[1])[:-1])
    with pytest.raises(sk.PackedFormatError, match=r"node 'fc'.*meta has 31 elements, expected 32"):
        sparse_ops.make_session(_model([node], inits))


def test_short_values_is_rejected(rng: np.random.Generator) -> None:
    node, inits = _nm_case(rng)
    _set(inits[0], numpy_helper.to_array(inits[0])[:-16])
    with pytest.raises(sk.PackedFormatError, match="values has"):
        sparse_ops.make_session(_model([node], inits))


def test_unsorted_positions_are_rejected(rng: np.random.Generator) -> None:
    node, inits = _nm_case(rng)
    meta = numpy_helper.to_array(inits[1]).copy()
    meta[[0, 1, 2, 3]] = meta[[2, 3, 0, 1]]  # swap the two slots of tile 0, group 0
    _set(inits[1], meta)
    with pytest.raises(sk.PackedFormatError, match="strictly increasing"):
        sparse_ops.make_session(_model([node], inits))


def test_bad_attributes_are_rejected(rng: np.random.Generator) -> None:
    node, inits = _nm_case(rng)
    for a in node.attribute:
        if a.name == "m":
            a.i = 5
    with pytest.raises(sk.PackedFormatError, match="unsupported pattern 2:5"):
        sparse_ops.make_session(_model([node], inits))


@pytest.mark.parametrize("damage", ["kidx", "tile_ptr"])
def test_bad_block_indices_are_rejected(damage: str, rng: np.random.Generator) -> None:
    w = sk.prune_block(rng.standard_normal((16, 20)), 0.5, 4)
    node, inits = sparse_ops.block_matmul_node("x", "y", w, 4, "blk")
    by_name = {t.name.rsplit(".", 1)[1]: t for t in inits}
    arr = numpy_helper.to_array(by_name[damage]).copy()
    if damage == "kidx":
        arr[-1] = 15  # rows 15..18 of a K=16 weight
    else:
        arr[1] = arr[-1] + 1  # pointers no longer rise
    _set(by_name[damage], arr)
    with pytest.raises(sk.PackedFormatError, match="node 'blk'.*tile_ptr must rise"):
        sparse_ops.make_session(_model([node], inits))


def test_weights_must_be_initializers(rng: np.random.Generator) -> None:
    node, inits = _nm_case(rng)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
              helper.make_tensor_value_info(inits[1].name, TensorProto.UINT16, None)]
    with pytest.raises(sk.PackedFormatError, match="must be a constant initializer"):
        sparse_ops.make_session(_model([node], inits[:1], inputs))


def test_wrong_input_width_fails_the_run_not_the_process(rng: np.random.Generator) -> None:
    node, inits = _nm_case(rng)
    session = sparse_ops.make_session(_model([node], inits))
    with pytest.raises(Exception, match="X has 8 columns, the weight K=16"):
        session.run(None, {"x": np.ones((2, 8), np.float32)})


def test_unknown_isa_is_a_one_line_error(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sk.ENV_ISA, "mmx")
    node, inits = _nm_case(rng)
    with pytest.raises(sk.KernelUnavailableError, match="unknown kernel ISA 'mmx'"):
        sparse_ops.make_session(_model([node], inits))


def test_missing_library_is_a_one_line_error(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsec.runtime import make_session

    node, inits = _nm_case(rng)
    data = _model([node], inits).SerializeToString()
    monkeypatch.setattr(_native, "_candidates", lambda: [])
    _native.load.cache_clear()
    try:
        with pytest.raises(sk.KernelUnavailableError) as info:
            make_session(data)  # detects the kernel domain in the model
        assert "\n" not in str(info.value)
    finally:
        _native.load.cache_clear()


def test_artifacts_of_the_old_pyop_domain_get_a_clear_error(rng: np.random.Generator) -> None:
    from sparsec.errors import InputError
    from sparsec.runtime import make_session

    node, inits = _nm_case(rng)
    node.domain = "ai.onnx.contrib"
    model = _model([node], inits)
    model.opset_import[1].domain = "ai.onnx.contrib"
    with pytest.raises(InputError, match="compile it again"):
        make_session(model.SerializeToString())
