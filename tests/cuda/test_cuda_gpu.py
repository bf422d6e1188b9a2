"""The CUDA 2:4 kernels on a real GPU (skipped where none is present): GEMV and GEMM paths
against the dense product of the same fp16/bf16 weights, and against the CPU emulation."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.kernels import prune_nm
from sparsec.kernels.packing_sparse_tc import pack_sparse_tc, round_to
from sparsec.kernels.sparse_tc_emulation import emulate_matmul

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    from sparsec.kernels import cuda_build
    from sparsec.kernels.cuda_runtime import Sp24Library

    if cuda_build.find_nvcc() is None:
        pytest.skip("nvcc not found")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        pytest.skip(f"sparse tensor cores need sm_80+, this GPU is sm_{major}{minor}")
    arch = "sm_90" if major >= 9 else ("sm_89" if (major, minor) == (8, 9) else "sm_80")
    return torch, Sp24Library(arch)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("k", "c", "batch"), [
    (64, 16, 1), (256, 40, 3), (512, 96, 8),  # GEMV path (batch <= 8)
    (256, 72, 17), (1024, 200, 300),  # GEMM path, partial row/batch tiles
])
def test_kernel_matches_dense(gpu, dtype: str, k: int, c: int, batch: int) -> None:
    torch, lib = gpu
    rng = np.random.default_rng(k + c + batch)
    w = prune_nm(rng.standard_normal((k, c)).astype(np.float32), 2, 4)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    packed = pack_sparse_tc(w, dtype)
    tdtype = torch.float16 if dtype == "float16" else torch.bfloat16
    y = lib.matmul(packed, lib.to_device(packed), torch.from_numpy(x).to("cuda", tdtype))
    torch.cuda.synchronize()
    got = y.float().cpu().numpy()
    ref = round_to(x, dtype).astype(np.float64) @ round_to(w, dtype).astype(np.float64)
    # Output rounded to fp16/bf16: half an ulp of the output, relative to its magnitude.
    tol = (2**-10 if dtype == "float16" else 2**-7) * max(1.0, float(np.abs(ref).max()))
    assert np.max(np.abs(got - ref)) <= tol
    emu = emulate_matmul(packed, x) if k * c * batch <= 256 * 96 * 17 else None
    if emu is not None:
        assert np.max(np.abs(got - round_to(emu, dtype))) <= tol
