"""The cross-compiled kernel library and the runners' ABI assumptions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.kernels import cross_build
from sparsec.kernels.pipe_runner import PipeRunner

EM_AARCH64 = 183


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


def test_kernel_library_is_aarch64_and_exports_the_ort_entry(arm_toolchain) -> None:
    lib = cross_build.kernel_library()
    assert elf_machine(lib) == EM_AARCH64
    nm = subprocess.run([f"{cross_build.TRIPLE}-nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True)
    if nm.returncode:
        pytest.skip(f"{cross_build.TRIPLE}-nm unavailable")
    symbols = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    assert {"RegisterCustomOps", "sk_nm_matmul", "sk_isa_supported"} <= symbols


def test_ort_runner_slots_on_the_host_runtime(tmp_path) -> None:
    """kernels/ort_arm/ort_runner.c addresses OrtApi by slot: built for the host and run on the
    host's onnxruntime (same version as the aarch64 wheel), a wrong slot fails or miscomputes."""
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so.*"))
    if not libs or subprocess.run(["gcc", "--version"], capture_output=True).returncode:
        pytest.skip("no host gcc or no libonnxruntime.so in the onnxruntime wheel")
    (tmp_path / "libonnxruntime.so.1").symlink_to(libs[0])
    exe = tmp_path / "ort_runner"
    src = Path(cross_build.__file__).parent / "ort_arm" / "ort_runner.c"
    subprocess.run(["gcc", "-std=c11", "-O1", str(src), "-o", str(exe), str(tmp_path / "libonnxruntime.so.1")],
                   check=True)
    w = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Cast", ["y"], ["n"], to=TensorProto.INT64)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [3, 5])], [numpy_helper.from_array(w, "W")])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), model)
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32) * 4
    runner = PipeRunner([str(exe), str(model), "", "1", "x", "--", "y", "n"], lib_dirs=[tmp_path], emulated=False)
    try:
        (y, n), median, fastest = runner.run([x], repeat=3)
        (y2, _), _, _ = runner.run([x + 1], repeat=1)  # a second request on the same process
    finally:
        runner.close()
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(n, (x @ w).astype(np.int64))
    np.testing.assert_allclose(y2, (x + 1) @ w, rtol=1e-5, atol=1e-5)
    assert n.dtype == np.int64 and 0 < fastest <= median


def test_runner_error_is_one_line(tmp_path) -> None:
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so.*"))
    if not libs:
        pytest.skip("no libonnxruntime.so in the onnxruntime wheel")
    (tmp_path / "libonnxruntime.so.1").symlink_to(libs[0])
    exe = tmp_path / "ort_runner"
    src = Path(cross_build.__file__).parent / "ort_arm" / "ort_runner.c"
    subprocess.run(["gcc", "-std=c11", str(src), "-o", str(exe), str(tmp_path / "libonnxruntime.so.1")], check=True)
    r = subprocess.run([str(exe), str(tmp_path / "missing.onnx"), "", "1", "x", "--", "y"], capture_output=True,
                       text=True, env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("sparsec_ort_runner: CreateSession")
