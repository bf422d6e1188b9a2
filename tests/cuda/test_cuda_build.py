"""nvcc builds the 2:4 tensor-core library for sm_80 and sm_90; PTX and SASS hold sparse MMAs."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from sparsec.kernels import cuda_build
from sparsec.kernels.errors import KernelUnavailableError


def test_ptx_contains_sparse_mma(cuda_objects: cuda_build.CudaBuild) -> None:
    ptx = cuda_objects.ptx_text()
    assert f".target {cuda_objects.arch}" in ptx
    # fp16 and bf16, both sparsity selectors, fp32 accumulate: the four instruction forms used.
    for dtype in ("f16.f16", "bf16.bf16"):
        forms = re.findall(
            rf"mma\.sp::ordered_metadata\.sync\.aligned\.m16n8k32\.row\.col\.f32\.{dtype}\.f32"
            r"[^;]*,\s*%r\d+,\s*([01]);",
            ptx,
        )
        assert sorted(set(forms)) == ["0", "1"], f"{dtype}: selectors {forms}"
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx
    assert "cp.async.cg.shared.global" in ptx


def test_cubin_is_elf_for_the_arch(cuda_objects: cuda_build.CudaBuild) -> None:
    data = cuda_objects.files["cubin"].read_bytes()
    assert data[:4] == b"\x7fELF"


def test_sass_has_sparse_hmma(cuda_objects: cuda_build.CudaBuild) -> None:
    """The SASS for each arch holds the sparse HMMAs (ptxas kept mma.sp, fp16 and bf16)."""
    tool = cuda_build.find_cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (dev extras)")
    sass = cuda_build.sass_text(cuda_objects.files["cubin"], tool)
    assert f"code for {cuda_objects.arch}" in sass
    ops = set(re.findall(r"HMMA\.SP\.16832\.F32(?:\.BF16)?", sass))
    assert ops == {"HMMA.SP.16832.F32", "HMMA.SP.16832.F32.BF16"}, ops


def test_both_required_archs_are_built(nvcc: str) -> None:
    """Issue 14 asks for sm_80 and sm_90: the parametrized fixture must cover both."""
    assert {"sm_80", "sm_90"} <= set(cuda_build.ARCHS)
    ptx = {arch: cuda_build.build(arch, kinds=("ptx",), nvcc=nvcc).ptx_text() for arch in ("sm_80", "sm_90")}
    assert ".target sm_80" in ptx["sm_80"] and ".target sm_90" in ptx["sm_90"]


def test_sass_of_a_missing_cuobjdump_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(KernelUnavailableError, match="cuobjdump -sass failed"):
        cuda_build.sass_text(tmp_path / "none.cubin", "/bin/false")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_shared_library_exports_the_entry_point(nvcc: str, arch: str) -> None:
    lib = cuda_build.build(arch, kinds=("so",), nvcc=nvcc).files["so"]
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    symbols = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert re.search(rf"\bT {cuda_build.LIB_SYMBOL}\b", symbols)


def test_build_is_cached(nvcc: str) -> None:
    first = cuda_build.build("sm_80", kinds=("ptx",), nvcc=nvcc)
    stamp = first.files["ptx"].stat().st_mtime_ns
    again = cuda_build.build("sm_80", kinds=("ptx",), nvcc=nvcc)
    assert again.files["ptx"] == first.files["ptx"]
    assert again.files["ptx"].stat().st_mtime_ns == stamp


def test_unknown_arch_and_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown CUDA arch"):
        cuda_build.build("sm_70")
    with pytest.raises(ValueError, match="unknown output kinds"):
        cuda_build.build("sm_80", kinds=("fatbin",))


def test_missing_nvcc_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SPARSEC_NVCC", str(tmp_path / "no-nvcc"))
    with pytest.raises(cuda_build.CudaToolkitUnavailableError, match="nvcc not found"):
        cuda_build.build("sm_80", kinds=("ptx",))


def test_compile_error_is_one_line(nvcc: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "cuda"
    src.mkdir()
    (src / cuda_build.MAIN_SOURCE).write_text("this is not CUDA;\n")
    monkeypatch.setattr(cuda_build, "SOURCE_DIR", src)
    with pytest.raises(KernelUnavailableError, match="nvcc failed building ptx for sm_80") as info:
        cuda_build.build("sm_80", kinds=("ptx",), out_dir=tmp_path / "out", nvcc=nvcc)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "out").glob("*.ptx"))
