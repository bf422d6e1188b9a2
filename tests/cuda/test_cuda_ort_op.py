"""Issue 14 item 3: the 2:4 CUDA kernel as an ONNX Runtime custom op for the CUDA EP
(kernels/cuda/sp24_ort_op.cu, built by nvcc into libsparsec_cuda_ort_<arch>.so). Compile-only
here (no GPU, onnxruntime without the CUDA EP): the library builds for sm_80 and sm_90, exports
RegisterCustomOps, holds the mma.sp kernels, and ONNX Runtime's CPU build accepts its
registration (the op then exists, for the CUDA EP only). The op has never run."""

from __future__ import annotations

import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.kernels import cuda_build
from sparsec.kernels.packing_sparse_tc import pack_sparse_tc


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def ort_library(request: pytest.FixtureRequest) -> str:
    if cuda_build.find_nvcc() is None:
        pytest.skip("nvcc not found (CUDA toolkit)")
    return str(cuda_build.build(request.param, kinds=("ort",)).files["ort"])


def _model() -> bytes:
    """Sp24MatMul on a [64, 16] 2:4 weight in the packer's layout."""
    w = np.zeros((64, 16), np.float32)
    w[::2] = 1.0
    p = pack_sparse_tc(w, "float16")
    node = helper.make_node("Sp24MatMul", ["x", "v", "m"], ["y"], domain="com.sparsec.cuda", K=64, N=16, name="sp")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 16])],
                              [numpy_helper.from_array(p.values, "v"), numpy_helper.from_array(p.meta, "m")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.sparsec.cuda", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def test_library_exports_register_custom_ops(ort_library: str) -> None:
    symbols = subprocess.run(["nm", "-D", "--defined-only", ort_library], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "RegisterCustomOps" in symbols and "sparsec_cuda_ort_info" in symbols
    if cuda_build.find_cuobjdump() is None:
        pytest.skip("cuobjdump not installed")
    assert "HMMA.SP.16832.F32" in cuda_build.sass_text(ort_library)


def test_onnxruntime_accepts_the_registration(ort_library: str) -> None:
    """Without the library ORT does not know the op; with it, the op is registered for the
    CUDA EP only, so a CPU-only session finds no implementation (the op cannot run here)."""
    with pytest.raises(Exception, match="is not a registered function/op"):
        ort.InferenceSession(_model(), providers=["CPUExecutionProvider"])
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(ort_library)
    with pytest.raises(Exception, match=r"Could not find an implementation for Sp24MatMul\(1\) node with name 'sp'"):
        ort.InferenceSession(_model(), opts, providers=["CPUExecutionProvider"])
