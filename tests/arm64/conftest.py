"""Fixtures for the arm64 tests: the cross toolchain, qemu and the aarch64 runtime wheels.

Each fixture skips with the reason when its part is missing (kernels/ci_setup.sh installs the
Debian packages; the wheels are downloaded from PyPI once into the user cache).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from sparsec.kernels import cross_build


@pytest.fixture(scope="session")
def arm_toolchain() -> None:
    reason = cross_build.problem(need_qemu=True, need_cxx=True)
    if reason is not None:
        pytest.skip(f"aarch64 toolchain: {reason}")


@pytest.fixture(scope="session")
def tvm_arm_runtime(arm_toolchain) -> Path:
    pytest.importorskip("tvm", reason="TVM is not installed (the tvm extra)")
    from sparsec.kernels import aarch64_runtime

    try:
        return aarch64_runtime.runtime_dir()
    except cross_build.CrossToolchainError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def ort_arm_runtime(arm_toolchain) -> Path:
    from sparsec.kernels import aarch64_runtime

    try:
        return aarch64_runtime.onnxruntime_dir()
    except cross_build.CrossToolchainError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT, hidden 128, FFN 512 (transformers, random weights), exported once."""
    pytest.importorskip("transformers")
    from sparsec.models_zoo.hf_tiny_bert import export_tiny_bert

    path = tmp_path_factory.mktemp("arm64_bert") / "tiny_bert.onnx"
    onnx.save(export_tiny_bert(hidden=128), path)
    return path
