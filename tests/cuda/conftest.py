"""Fixtures for the CUDA kernel tests: nvcc builds (cached), skipped cleanly without nvcc."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.kernels import cuda_build


@pytest.fixture(scope="session")
def nvcc() -> str:
    path = cuda_build.find_nvcc()
    if path is None:
        pytest.skip("nvcc not found: the CUDA toolkit is not installed (set SPARSEC_NVCC)")
    return path


@pytest.fixture(scope="session", params=["sm_80", "sm_90"])
def cuda_objects(request: pytest.FixtureRequest, nvcc: str) -> cuda_build.CudaBuild:
    """PTX and cubin for each arch the issue requires (content-addressed cache: built once)."""
    return cuda_build.build(request.param, kinds=("ptx", "cubin"), nvcc=nvcc)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)
