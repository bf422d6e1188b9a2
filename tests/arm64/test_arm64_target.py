"""`--target=arm64`: registration, backend choice and the one-line errors (no toolchain needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sparsec.errors import OptionError
from sparsec.targets import get_target, known_targets


def sparsec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsec.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_arm64_is_a_target_with_two_backends() -> None:
    assert "arm64" in known_targets()
    t = get_target("arm64")
    assert t.backend_for(None) == "ort-arm64"
    assert t.backend_for("ort") == "ort-arm64"
    assert t.backend_for("tvm") == "tvm-arm64"
    assert not t.measured_here and "qemu" in t.not_measured_reason
    assert get_target("cpu").backend_for(None) == "ort"


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(OptionError, match=r"target 'arm64' has no backend 'cuda' \(known: ort, tvm\)"):
        get_target("arm64").backend_for("cuda")
    with pytest.raises(OptionError, match=r"target 'cpu' has no backend 'ort-gpu' \(known: ort, tvm\)"):
        get_target("cpu").backend_for("ort-gpu")


@pytest.fixture
def small_onnx(tmp_path):
    """y = relu(x @ W), W 256x256: enough for 2:4 pruning, built without the zoo."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])], [w])
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_cli_unsupported_backend_is_one_line(tmp_path, small_onnx) -> None:
    r = sparsec("compile", str(small_onnx), "--target=arm64", "--backend=onnx", "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["sparsec: error: target 'arm64' has no backend 'onnx' (known: ort, tvm)"]
    assert not (tmp_path / "out").exists()


def test_cli_missing_cross_compiler_is_one_line(tmp_path, small_onnx) -> None:
    r = sparsec("compile", str(small_onnx), "--target=arm64", "-o", str(tmp_path / "out"),
                env={"AARCH64_CC": "no-such-aarch64-gcc"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("sparsec: error: --target=arm64 cannot compile here: no-such-aarch64-gcc not found")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
