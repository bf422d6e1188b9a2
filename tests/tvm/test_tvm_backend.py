"""`--backend=tvm` on x86: real TVM builds of tiny models, run through the CLI, the Python API
and `sparsec.runtime.load`, checked against ONNX Runtime on the same compiled graph.

TVM builds take tens of seconds on a loaded 2-core machine: the module builds one CLI artifact
and one Python-API artifact and every test reads those. Kernel objects are cached for the
session (SPARSEC_TVM_KERNEL_CACHE), as zoo exports are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'sparsec[tvm]')")

from sparsec.compiler import CompileOptions, compile_model  # noqa: E402
from sparsec.errors import InputError  # noqa: E402
from sparsec.ir.io import load_model, save_model  # noqa: E402
from sparsec.kernels import kernels_available  # noqa: E402
from sparsec.runtime import load, make_session  # noqa: E402
from sparsec.testing import make_model, seeded  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec C kernels are not built")

# Two 256-wide layers (2:4 lowers them to the kernel op), a Gemm with bias, batch symbolic.
WIDE = """
<ir_version: 10, opset_import: ["" : 18]>
wide (float[batch,256] x) => (float[batch,128] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  s = Gemm <transB = 1> (r, w2, b2)
  t = Tanh(s)
  y = MatMul(t, w3)
}
"""


def write_wide(folder: Path) -> Path:
    path = folder / "wide.onnx"
    model = make_model(WIDE, w1=seeded((256, 256), 4), w2=seeded((256, 256), 5), b2=seeded((256,), 6),
                       w3=seeded((256, 128), 7))
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEC_TVM_KERNEL_CACHE", str(tmp_path_factory.mktemp("tvm_kernels")))
        yield


@pytest.fixture(scope="module")
def cli_artifact(tmp_path_factory: pytest.TempPathFactory, kernel_cache) -> Path:
    """`sparsec compile wide.onnx --target=cpu --backend=tvm --dim batch=4 --no-tune` (one build)."""
    folder = tmp_path_factory.mktemp("tvm_cli")
    src = write_wide(folder)
    out = folder / "out"
    done = subprocess.run(
        [sys.executable, "-m", "sparsec.cli", "compile", str(src), "--target=cpu", "--backend=tvm",
         "--dim", "batch=4", "--no-bench", "--no-tune", "-o", str(out)],  # fixed thresholds: lowered on every CPU
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    return out


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((4, 256)).astype(np.float32)}


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.mark.slow
def test_cli_artifact_holds_library_params_and_manifest(cli_artifact: Path) -> None:
    manifest = json.loads((cli_artifact / "manifest.json").read_text())
    assert manifest["backend"] == "tvm"
    for name in ("model.so", "params.bin", "tvm_signature.json"):
        assert name in manifest["files"] and (cli_artifact / name).stat().st_size > 0
    lowered = next(p for p in manifest["passes"] if p["pass"].startswith("lower-nm-kernels"))
    assert lowered["stats"]["layers_lowered"] == 2  # the 256x256 layers run on the C kernels
    signature = json.loads((cli_artifact / "tvm_signature.json").read_text())
    assert signature["inputs"] == [{"name": "x", "shape": [4, 256], "dtype": "float32"}]
    # The kernels' packed functions are exported by model.so itself (linked in, not next to it).
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(cli_artifact / "model.so")],
                             capture_output=True, text=True).stdout
    assert "__tvm_ffi_sparsec_nm_matmul" in symbols
    assert " sk_nm_matmul" not in symbols  # kernel internals stay hidden


def test_runtime_load_runs_tvm_and_matches_ort_on_the_same_graph(cli_artifact: Path) -> None:
    session = load(cli_artifact)
    ort = make_session((cli_artifact / "model.onnx").read_bytes())  # the same lowered graph on ORT
    for seed in (1, 2):
        feeds = _feeds(seed)
        (got,) = session.run(feeds)
        (ref,) = ort.run(None, feeds)
        assert got.shape == (4, 128)
        assert _rel(ref, got) <= 1e-4


def test_model_so_runs_without_sparsec(cli_artifact: Path) -> None:
    """The deployment claim: TVM's runtime alone runs model.so + params.bin."""
    script = f"""
import sys, numpy as np, tvm
from tvm import relax
assert not any(m.startswith("sparsec") for m in sys.modules)
vm = relax.VirtualMachine(tvm.runtime.load_module("{cli_artifact}/model.so"), tvm.cpu())
p = tvm.runtime.load_param_dict(open("{cli_artifact}/params.bin", "rb").read())
x = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
y = vm["main"](tvm.runtime.tensor(x), *[p[f"p{{i}}"] for i in range(len(p))]).numpy()
np.save("{cli_artifact}/../standalone.npy", y)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    (ref,) = load(cli_artifact).run(_feeds(1))
    assert np.array_equal(np.load(cli_artifact.parent / "standalone.npy"), ref)


def test_bad_feeds_are_one_line_errors(cli_artifact: Path) -> None:
    session = load(cli_artifact)
    with pytest.raises(InputError, match=r"input 'x': got float32\[2, 256\], the model takes float32\[4, 256\]"):
        session.run({"x": np.zeros((2, 256), np.float32)})
    with pytest.raises(InputError, match="missing input 'x'"):
        session.run({})
    with pytest.raises(InputError, match="unknown input 'z'"):
        session.run({**_feeds(), "z": np.zeros(1)})


def test_python_api_matches_ort_backend(tmp_path: Path, kernel_cache) -> None:
    src = write_wide(tmp_path)
    tvm_result = compile_model(load_model(src), CompileOptions(backend="tvm", dims={"batch": 4}, bench=False,
                                                               fidelity_samples=1))
    # Tuning off: the TVM backend prunes and lowers by the fixed thresholds (the tuner times ORT
    # sessions), so the ORT compile must decide the same way for the two to be comparable.
    ort_result = compile_model(load_model(src), CompileOptions(backend="ort", dims={"batch": 4}, bench=False,
                                                               fidelity_samples=1, tune=False))
    assert tvm_result.manifest["backend"] == "tvm" and ort_result.manifest["backend"] == "ort"
    assert tvm_result.fidelity.worst_cosine == pytest.approx(ort_result.fidelity.worst_cosine, abs=1e-5)
    from sparsec.backends.base import get_backend

    run_tvm = get_backend("tvm").runner(tvm_result.compiled)
    run_ort = get_backend("ort").runner(ort_result.compiled)
    feeds = _feeds(3)
    assert _rel(run_ort(feeds)[0], run_tvm(feeds)[0]) <= 1e-4


def test_op_without_tvm_converter_is_named_at_compile_time(tmp_path: Path, capsys) -> None:
    from sparsec.cli.main import main

    text = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,8] x) => (float[1,8] y) {
  h = MatMul(x, w)
  y = Celu(h)
}
"""
    save_model(make_model(text, w=seeded((8, 8), 1)), tmp_path / "celu.onnx")
    out = tmp_path / "out"
    rc = main(["compile", str(tmp_path / "celu.onnx"), "--backend=tvm", "--sparsity=none", "--no-bench", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert err[-1].startswith("sparsec: error: backend 'tvm' cannot run this model: op ai.onnx.Celu (node ")
    assert err[-1].endswith("has no TVM importer converter")
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_unknown_backend_is_one_line(tmp_path: Path, capsys) -> None:
    from sparsec.cli.main import main

    save_model(make_model(WIDE, w1=seeded((256, 256), 4), w2=seeded((256, 256), 5), b2=seeded((256,), 6),
                          w3=seeded((256, 128), 7)), tmp_path / "m.onnx")
    rc = main(["compile", str(tmp_path / "m.onnx"), "--backend=tvmx", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no backend 'tvmx' (known: ort, tvm)" in err[0]
