"""`--target=arm64` (ORT backend): the artifact carries the aarch64 kernel op library, and ONNX
Runtime's own aarch64 build loads the two together under qemu with the x86 results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsec.compiler import CompileOptions, compile_file
from sparsec.runtime import InferenceSession

EM_AARCH64 = 183


@pytest.mark.slow
def test_artifact_runs_on_aarch64_onnxruntime_under_qemu(tiny_bert: Path, ort_arm_runtime, tmp_path) -> None:
    from sparsec.backends.ort_arm64.emulated import emulated_session

    out = tmp_path / "artifact"
    result = compile_file(tiny_bert, out, CompileOptions(target="arm64", fidelity_samples=1))
    m = result.manifest
    assert (m["target"], m["backend"]) == ("arm64", "ort-arm64")
    assert m["runtime_ops"] == ["NMSparseMatMul"]  # the FFN layers reach the kernel threshold
    assert m["latency"]["measured"] is False
    lib = out / "libsparsec_kernels.so"
    assert lib.read_bytes()[18:20] == EM_AARCH64.to_bytes(2, "little")
    assert {"libsparsec_kernels.so", "DEPLOY.md"} <= set(m["files"])
    assert "register_custom_ops_library" in (out / "DEPLOY.md").read_text()

    x86 = InferenceSession(out)
    rng = np.random.default_rng(3)
    feeds = {"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int64), "attention_mask": np.ones((1, 16), np.int64)}
    expected = x86.run(None, feeds)
    outputs = [o.name for o in x86.get_outputs()]
    with emulated_session(out / "model.onnx", lib, list(feeds), outputs) as arm:
        got, _, _ = arm.run(list(feeds.values()))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(np.abs(e).max()))
