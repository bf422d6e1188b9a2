"""Inside an ONNX Runtime session the kernels' parallel regions run on ORT's intra-op pool
(KernelContext_ParallelFor, slot 274 of sk_ort_abi.h); $SPARSEC_KERNEL_POOL=own keeps the
kernels' own pool. Both give the same results."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from onnx import TensorProto, helper

from sparsec import kernels as sk
from sparsec.kernels import _native

from .conftest import assert_matches

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")
sparse_ops = pytest.importorskip("sparsec.backends.ort.sparse_ops")


def _regions() -> int:
    lib = _native.load()
    lib.sk_host_pool_regions.restype = ctypes.c_longlong
    return int(lib.sk_host_pool_regions())


def _session(w: np.ndarray, threads: int):
    node, inits = sparse_ops.nm_matmul_node("x", "y", w, 1, 4, "fc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(sparse_ops.KERNEL_DOMAIN, 1)])
    return sparse_ops.make_session(model, threads=threads, kernel_threads=threads)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_regions_run_on_onnxruntimes_pool(threads: int, rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((512, 256)), 1, 4)
    session = _session(w, threads)
    x = rng.standard_normal((257, 512)).astype(np.float32)  # enough work for several threads
    before = _regions()
    assert_matches(session.run(None, {"x": x})[0], x, w)
    # One thread: no parallel region at all. More: every region went to ORT's pool.
    assert (_regions() > before) == (threads > 1)


def test_own_pool_on_request(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    w = sk.prune_nm(rng.standard_normal((512, 256)), 1, 4)
    monkeypatch.setenv("SPARSEC_KERNEL_POOL", "own")  # read when a session registers the ops
    session = _session(w, 2)
    x = rng.standard_normal((257, 512)).astype(np.float32)
    before = _regions()
    assert_matches(session.run(None, {"x": x})[0], x, w)
    assert _regions() == before
