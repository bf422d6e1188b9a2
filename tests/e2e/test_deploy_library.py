"""An artifact with kernel ops runs without sparsec: plain ONNX Runtime from Python (in a
process where sparsec cannot be imported) and from C, against the dense-pruned model."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sparsec.backends.ort.op_library import LIBRARY_FILE, artifact_library, host_arch
from sparsec.capture import from_onnx
from sparsec.compiler import CompileOptions, compile_file
from sparsec.errors import InputError
from sparsec.ir.io import model_bytes, save_model
from sparsec.kernels import kernels_available
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.runtime import InferenceSession
from sparsec.testing import make_model, seeded

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")
EXAMPLE = Path(__file__).resolve().parents[2] / "kernels" / "examples" / "run_artifact.c"
ORT_DIR = Path(ort.__file__).resolve().parent
# Two 256x256 layers, one with a bias: large enough that 2:4 lowers to the kernel ops.
WIDE_MLP = """
<ir_version: 10, opset_import: ["" : 18]>
wide (float[1,256] x) => (float[1,256] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = Gemm <transB = 1> (r, w2, b2)
}
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(artifact folder, dense-pruned standard ONNX model with the same pruned weights)."""
    tmp = tmp_path_factory.mktemp("deploy")
    source = tmp / "wide.onnx"
    save_model(make_model(WIDE_MLP, w1=seeded((256, 256), 4), w2=seeded((256, 256), 5), b2=seeded((256,), 6)), source)
    out = tmp / "art"
    result = compile_file(source, out, CompileOptions(sparsity="2:4", bench=False, min_cosine=-1.0, tune=False))
    assert result.manifest["runtime_ops"] == ["NMSparseMatMul"]
    # The same optimisation pipeline, legalized to standard ONNX: pruned weights stored dense.
    # tune=False as in the compile: `only_faster` must not consult this machine's tuning cache
    # (where batch-1 256x256 2:4 may have measured no faster, leaving the reference unpruned).
    dense = from_onnx(str(source))
    PassManager(parse_pipeline(result.manifest["pipeline"] + ",legalize-dense")).run(dense, PassContext(tune=False))
    reference = tmp / "dense_pruned.onnx"
    reference.write_bytes(model_bytes(dense))
    return out, reference


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 256)).astype(np.float32)}


def _dense_pruned(reference: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_manifest_lists_the_library_with_its_hash(artifact: tuple[Path, Path]) -> None:
    out, _ = artifact
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["kernel_library"]
    data = (out / LIBRARY_FILE).read_bytes()
    assert entry["file"] == LIBRARY_FILE and LIBRARY_FILE in manifest["files"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert entry["arch"] == host_arch() and entry["domain"] == "com.sparsec.kernels"
    assert entry["ops"] == ["NMSparseMatMul"] and "register_custom_ops_library" in entry["load"]["python"]
    assert data[:4] == b"\x7fELF"
    assert "register_custom_ops_library" in (out / "report.md").read_text()


def test_plain_onnxruntime_without_sparsec(artifact: tuple[Path, Path], tmp_path: Path) -> None:
    out, reference = artifact
    feeds = _feeds()
    np.save(tmp_path / "x.npy", feeds["x"])
    # Isolated interpreter (-I: no environment, no user site; -S: no site-packages, so no
    # editable-install hook): sys.path is the standard library plus ONNX Runtime's folder.
    script = f"""
import sys
sys.path.append({str(ORT_DIR.parent)!r})
try:
    import sparsec
    sys.exit("sparsec is importable here")
except ImportError:
    pass
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.register_custom_ops_library({str(out / LIBRARY_FILE)!r})
session = ort.InferenceSession({str(out / "model.onnx")!r}, so, providers=["CPUExecutionProvider"])
x = np.load({str(tmp_path / "x.npy")!r})
np.save({str(tmp_path / "y.npy")!r}, session.run(None, {{"x": x}})[0])
"""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "y.npy")
    want = _dense_pruned(reference, feeds)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_sparsec_runtime_prefers_the_artifacts_library(artifact: tuple[Path, Path], tmp_path: Path) -> None:
    out, reference = artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert artifact_library(out, manifest) == str(out / LIBRARY_FILE)
    session = InferenceSession(out)
    feeds = _feeds(1)
    want = _dense_pruned(reference, feeds)
    got = session.run(None, feeds)[0]
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    # A library that is not the one the manifest describes is refused, never loaded.
    copy = tmp_path / "art"
    shutil.copytree(out, copy)
    lib = copy / LIBRARY_FILE
    lib.write_bytes(lib.read_bytes() + b"\0")
    with pytest.raises(InputError, match="sha256"):
        InferenceSession(copy)
    # Without the file the installed library runs the model.
    lib.unlink()
    assert artifact_library(copy, manifest) is None
    np.testing.assert_allclose(InferenceSession(copy).run(None, feeds)[0], got, rtol=1e-6, atol=1e-6)


def test_c_example_runs_the_artifact(artifact: tuple[Path, Path], tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc/cc) on PATH: the C deployment example is not built")
    runtime = next(iter(sorted((ORT_DIR / "capi").glob("libonnxruntime.so.*"))), None)
    if runtime is None:
        pytest.skip(f"no libonnxruntime.so.* in {ORT_DIR / 'capi'}")
    out, reference = artifact
    # The wheel's library is named by its full version; the program links by the soname.
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / "libonnxruntime.so.1").symlink_to(runtime)
    exe = tmp_path / "run_artifact"
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", str(EXAMPLE), "-o", str(exe), f"-L{libdir}",
                    "-l:libonnxruntime.so.1", f"-Wl,-rpath,{libdir}"], check=True, capture_output=True, timeout=120)
    feeds = _feeds(2)
    (tmp_path / "in.bin").write_bytes(feeds["x"].tobytes())
    proc = subprocess.run([str(exe), str(out), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "y: shape [1, 256]" in proc.stdout
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(1, 256)
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(out / LIBRARY_FILE))
    python = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, python, rtol=1e-6, atol=1e-6)
    want = _dense_pruned(reference, feeds)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    # A bad input file: one line on stderr, exit status 1, no crash.
    (tmp_path / "short.bin").write_bytes(b"\0" * 8)
    proc = subprocess.run([str(exe), str(out), str(tmp_path / "short.bin")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "ends before input 'x'" in proc.stderr


# ---------------------------------------------------------------- the version guard

# Pointers returned from the callbacks as integers (ctypes leaks pointer-typed callback results).
_GET_API = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_uint32)
_VERSION = ctypes.CFUNCTYPE(ctypes.c_size_t)
_CREATE_STATUS = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p)
_OLD_VERSION = ctypes.create_string_buffer(b"1.15.1")


class _ApiBase(ctypes.Structure):
    _fields_ = [("GetApi", _GET_API), ("GetVersionString", _VERSION)]


@pytest.mark.parametrize("has_v1", [True, False])
def test_an_older_onnxruntime_is_refused_with_a_message(artifact: tuple[Path, Path], has_v1: bool) -> None:
    """A runtime without C API version 16 (ONNX Runtime < 1.16): RegisterCustomOps returns an
    error status naming both versions, and calls nothing else of the runtime."""
    out, _ = artifact
    lib = ctypes.CDLL(str(out / LIBRARY_FILE))
    messages: list[bytes] = []

    @_CREATE_STATUS
    def create_status(code: int, msg: bytes) -> int:
        messages.append(msg)
        return 0x1234  # any non-null status pointer

    table = (ctypes.c_void_p * 1)(ctypes.cast(create_status, ctypes.c_void_p))  # slot 0 only

    @_GET_API
    def get_api(version: int) -> int:
        return ctypes.addressof(table) if version == 1 and has_v1 else 0

    @_VERSION
    def version() -> int:
        return ctypes.addressof(_OLD_VERSION)

    base = _ApiBase(get_api, version)
    lib.RegisterCustomOps.restype = ctypes.c_void_p
    lib.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    status = lib.RegisterCustomOps(None, ctypes.addressof(base))
    if has_v1:
        assert status == 0x1234
        assert messages == [b"sparsec kernels (libsparsec_kernels) need ONNX Runtime >= 1.16 (C API version 16); "
                            b"this runtime is 1.15.1"]
    else:  # nothing to build a status with: no registration, and no crash
        assert status is None and messages == []


def test_the_library_works_with_the_installed_onnxruntime_abi(artifact: tuple[Path, Path]) -> None:
    """The slot numbers the library uses agree with this runtime (sk_ort_abi_selftest)."""
    out, _ = artifact
    lib = ctypes.CDLL(str(out / LIBRARY_FILE))
    runtime = ctypes.CDLL(str(next(iter(sorted((ORT_DIR / "capi").glob("libonnxruntime.so.*"))))))
    runtime.OrtGetApiBase.restype = ctypes.c_void_p
    msg = ctypes.create_string_buffer(256)
    lib.sk_ort_abi_selftest.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    assert lib.sk_ort_abi_selftest(runtime.OrtGetApiBase(), msg, 256) == 0, msg.value
    assert msg.value.decode() == ort.__version__



def test_a_real_older_onnxruntime_refuses_the_library(artifact: tuple[Path, Path], tmp_path: Path) -> None:
    """With an unpacked onnxruntime < 1.16 wheel (folder in $SPARSEC_OLD_ORT_DIR, e.g. from
    `pip download --no-deps onnxruntime==1.15.1` then unzip): registration fails with the
    library's message, in a process that does not crash."""
    old = os.environ.get("SPARSEC_OLD_ORT_DIR")
    if not old:
        pytest.skip("set SPARSEC_OLD_ORT_DIR to an unpacked onnxruntime<1.16 wheel to run this check")
    out, _ = artifact
    script = f"""
import sys
sys.path[:0] = [{old!r}]
sys.path.append({str(Path(np.__file__).resolve().parents[1])!r})
import onnxruntime as ort
so = ort.SessionOptions()
try:
    so.register_custom_ops_library({str(out / LIBRARY_FILE)!r})
except Exception as e:
    print("refused:", ort.__version__, e)
"""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "need ONNX Runtime >= 1.16 (C API version 16); this runtime is" in proc.stdout
