"""kernels/tvm_arm/sk_tvm_ops.cc built for the host: the packed function the aarch64 library
links in, called through tvm-ffi against NumPy (no qemu, no TVM build)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sparsec.kernels import pack_nm, prune_nm

KERNELS = Path(__file__).resolve().parents[2] / "kernels"


@pytest.fixture(scope="module")
def packed_op(tmp_path_factory):
    tvm_ffi = pytest.importorskip("tvm_ffi", reason="tvm-ffi is not installed (the tvm extra)")
    if shutil.which("g++") is None:
        pytest.skip("no host g++")
    from sparsec.kernels import _native
    from sparsec.kernels.cross_build import tvm_ffi_include

    if not _native.available():
        pytest.skip("the host kernel library is not built")
    kernels_lib = Path(_native.load()._name).resolve()  # the installed x86 build of kernels/src
    lib = tmp_path_factory.mktemp("packed_op") / "sk_tvm_ops.so"
    subprocess.run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", f"-I{tvm_ffi_include()}", f"-I{KERNELS / 'src'}",
                    str(KERNELS / "tvm_arm" / "sk_tvm_ops.cc"), str(kernels_lib), "-o", str(lib)], check=True)
    return tvm_ffi.load_module(str(lib))["sparsec_nm_matmul"]


@pytest.mark.parametrize(("n", "m", "rows"), [(2, 4, 1), (2, 4, 5), (1, 8, 3)])
def test_matches_numpy(packed_op, n: int, m: int, rows: int) -> None:
    import tvm_ffi

    rng = np.random.default_rng(n * 100 + m + rows)
    k, cols = 64, 48
    w = prune_nm(rng.standard_normal((k, cols)).astype(np.float32), n, m)
    packed = pack_nm(w, n, m)
    x = rng.standard_normal((1, rows, k)).astype(np.float32)
    y = np.zeros((1, rows, cols), np.float32)
    args = [tvm_ffi.from_dlpack(np.array(a)) for a in (x, packed.values, packed.meta)]  # writable copies
    packed_op(*args, n, m, tvm_ffi.from_dlpack(y))
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)


def test_rejects_wrong_dtype_and_rows(packed_op) -> None:
    import tvm_ffi

    w = prune_nm(np.ones((16, 16), np.float32), 2, 4)
    packed = pack_nm(w, 2, 4)
    values, meta = tvm_ffi.from_dlpack(np.array(packed.values)), tvm_ffi.from_dlpack(np.array(packed.meta))
    y = tvm_ffi.from_dlpack(np.zeros((2, 16), np.float32))
    with pytest.raises(TypeError, match="x must be float32"):
        packed_op(tvm_ffi.from_dlpack(np.ones((2, 16), np.float64)), values, meta, 2, 4, y)
    with pytest.raises(ValueError, match="disagree on the row count"):
        packed_op(tvm_ffi.from_dlpack(np.ones((3, 16), np.float32)), values, meta, 2, 4, y)
