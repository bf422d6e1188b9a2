"""Issue 14 item 4: `--target=cuda --backend=tvm` builds a CUDA model.so with TVM (compile only:
no GPU here). Checked: the artifact and its manifest (per-layer plan, latency not measured,
fp16-emulated fidelity), the library's exported entry points, the CUDA kernels in it (TVM's
generated kernels as a fatbin inside TVM's module blob, sparsec's mma.sp kernels as nvcc
objects: both listed by cuobjdump, the latter with HMMA.SP in its SASS), the packed 2:4
weights in params.bin (the packer's layout), and one-line errors for bad combinations.
About 15 s on two cores (kernel objects cached after the first build)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsec.cli.main import main
from sparsec.ir.io import save_model
from sparsec.kernels import cuda_build
from sparsec.kernels.packing_sparse_tc import pack_sparse_tc
from sparsec.testing import mlp_model

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="nvcc not found (CUDA toolkit)")

from sparsec.backends.tvm_cuda.library_blob import fatbins_in  # noqa: E402

from .exports import export  # noqa: E402


def _kernel_names(fatbin: Path) -> set[str]:
    return set(re.findall(r"Function : (\S+)", cuda_build.sass_text(fatbin)))


def _compile(source: str, out: Path, *extra: str) -> dict:
    assert main(["compile", source, "--target=cuda", "--backend=tvm", "--sparsity=2:4", *extra, "-o", str(out)]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("tvm_cuda_mlp")
    # Layer 1 a Gemm (transB=1, bias), K=128 and 256: both multiples of the kernel's 64.
    save_model(mlp_model(8, [128, 256, 64], gemm_first=True), folder / "mlp.onnx")
    return folder / "out", _compile(str(folder / "mlp.onnx"), folder / "out")


def test_mlp_artifact_and_manifest(mlp_artifact: tuple[Path, dict]) -> None:
    out, manifest = mlp_artifact
    assert manifest["backend"] == "tvm-cuda" and manifest["target"] == "cuda:sm_80"
    assert manifest["latency"] == {"measured": False, "reason": "not measured: no CUDA device"}
    assert "fp16 rounding" in manifest["fidelity"]["compiled"]
    assert 0.5 < manifest["fidelity"]["worst_cosine"] <= 1.0  # vs the dense model: pruning loss on a random MLP
    plan = manifest["tvm_cuda"]
    assert plan["arch"] == "sm_80" and plan["runs_here"] is False and plan["tvm_kernels"] > 0
    assert len(plan["sparse_layers"]) == 2 and plan["dense_layers"] == {}
    for name in ("model.so", "params.bin", "tvm_signature.json"):
        assert name in manifest["files"] and (out / name).stat().st_size > 0


def test_library_exports_the_sparse_kernel_and_holds_cuda_kernels(mlp_artifact: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = mlp_artifact
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(out / "model.so")], capture_output=True, text=True,
                             check=True).stdout
    assert "__tvm_ffi_sparsec_cuda_sp24_matmul" in symbols and "__tvm_ffi__library_bin" in symbols
    if cuda_build.find_cuobjdump() is None:
        pytest.skip("cuobjdump not installed (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    names: set[str] = set()
    sass = ""
    for i, blob in enumerate(fatbins_in((out / "model.so").read_bytes())):
        path = tmp_path / f"k{i}.fatbin"
        path.write_bytes(blob)
        names |= _kernel_names(path)
        sass += cuda_build.sass_text(path)
    signature = json.loads((out / "tvm_signature.json").read_text())
    assert signature["tvm_kernels"] and set(signature["tvm_kernels"]) <= names  # TVM's kernels, compiled for sm_80
    assert any("sp24_gemm_kernel" in n for n in names) and any("sp24_gemv_kernel" in n for n in names)
    assert "HMMA.SP.16832.F32" in sass  # the sparse tensor-core instruction made it into the library


def test_params_hold_the_packers_layout(mlp_artifact: tuple[Path, dict]) -> None:
    """The kernel consumes what kernels/packing_sparse_tc.py writes: the uint32 parameters of
    the library are exactly the packer's output for the artifact's 2:4 weights."""
    out, _ = mlp_artifact
    params = tvm.runtime.load_param_dict((out / "params.bin").read_bytes())
    packed = sorted((v.numpy() for v in params.values() if str(v.dtype) == "uint32"), key=lambda a: (a.ndim, a.size))
    model = onnx.load(out / "model.onnx")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    expected = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights:
            w = weights[node.input[1]]
            p = pack_sparse_tc(w.T if node.op_type == "Gemm" else w, "float16")
            expected += [p.values, p.meta]
    expected.sort(key=lambda a: (a.ndim, a.size))
    assert len(packed) == len(expected) == 4
    for got, want in zip(packed, expected, strict=True):
        assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.slow
def test_transformer_export_compiles(tmp_path: Path) -> None:
    """GPT-2 (2 layers, hidden 64) from torch's dynamo exporter: attention, LayerNorm, GELU
    through dlight, every 2:4 projection through the kernel."""
    manifest = _compile(str(export("gpt2", "dynamo", tmp_path / "gpt2.onnx")), tmp_path / "out")
    plan = manifest["tvm_cuda"]
    assert len(plan["sparse_layers"]) >= 8 and plan["tvm_kernels"] > 10
    assert all("dense on TVM" in why for why in plan["dense_layers"].values())
    assert manifest["latency"]["measured"] is False and manifest["fidelity"]["worst_cosine"] > 0.8


@pytest.mark.parametrize(("args", "message"), [
    (["--backend=foo"], "sparsec: error: target 'cuda' has no backend 'foo' (known: ort, tvm)"),
    (["--backend=tvm-arm64"], "sparsec: error: target 'cuda' has no backend 'tvm-arm64' (known: ort, tvm)"),
])
def test_bad_backend_is_one_line_error(args: list[str], message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compile", "zoo:mlp", "--target=cuda", *args, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and err.strip() == message and err.count("\n") == 1


def test_missing_nvcc_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEC_NVCC", str(tmp_path / "no-nvcc"))
    rc = main(["compile", "zoo:mlp", "--target=cuda", "--backend=tvm", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1
    assert err.startswith("sparsec: error: --target=cuda --backend=tvm cannot compile here: nvcc not found")
