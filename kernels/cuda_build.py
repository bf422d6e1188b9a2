"""Build the CUDA 2:4 kernel library (kernels/cuda/) with nvcc: PTX, cubin and shared library.

Never runs at import time: call ``build(arch)``. Outputs go to a content-addressed cache
folder (sources, arch, flags and nvcc version hashed), so a second call is free and two
processes never see a half-written file (each output is written to a temporary name and
renamed). No GPU is needed to build; running the library needs one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import KernelUnavailableError

log = logging.getLogger("sparsec.kernels.cuda")

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"
MAIN_SOURCE = "sp24_kernels.cu"
ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
KINDS = ("ptx", "cubin", "so")  # what build() makes by default
# "ort": the ONNX Runtime custom-op library for the CUDA EP (sp24_ort_op.cu + the kernels);
# built only when asked for.
ORT_SOURCE = "sp24_ort_op.cu"
# Status and shape helpers shared with the CPU op library (C, compiled by nvcc's host compiler).
ORT_UTIL = SOURCE_DIR.parent / "src" / "sk_ort_util.c"
ALL_KINDS = (*KINDS, "ort")
FLAGS = ("-O3", "-std=c++17")
LIB_SYMBOL = "sk_cuda_sp24_matmul"


class CudaToolkitUnavailableError(KernelUnavailableError):
    """nvcc is not installed (or not on PATH / $SPARSEC_NVCC)."""


@dataclass(frozen=True)
class CudaBuild:
    arch: str
    directory: Path
    files: dict[str, Path]  # kind -> path

    def ptx_text(self) -> str:
        return self.files["ptx"].read_text()


def _find_tool(tool: str, env_var: str, extra: list[Path]) -> str | None:
    """$env_var when set (None if it names no file), else `tool` on PATH, in $CUDA_HOME/bin
    (default /usr/local/cuda), or at the first of `extra` that exists."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    found = shutil.which(tool)
    if found:
        return found
    home = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda")
    return next((str(c) for c in [home / "bin" / tool, *extra] if c.is_file()), None)


def find_nvcc() -> str | None:
    """$SPARSEC_NVCC, else nvcc on PATH, else $CUDA_HOME/bin/nvcc."""
    return _find_tool("nvcc", "SPARSEC_NVCC", [])


def find_cuobjdump() -> str | None:
    """$SPARSEC_CUOBJDUMP, else cuobjdump on PATH or in $CUDA_HOME/bin, else the one the pip
    package `nvidia-cuda-cuobjdump` installs (nvidia/cu*/bin/, e.g. nvidia/cu13/bin/): the
    toolkit here ships nvcc and ptxas without it. It needs nvdisasm for -sass (see sass_text)."""
    return _find_tool("cuobjdump", "SPARSEC_CUOBJDUMP", _pip_tool_paths("cuobjdump"))


def _pip_tool_paths(tool: str) -> list[Path]:
    """`tool` in the bin folders of NVIDIA's pip wheels (namespace package `nvidia`): CUDA 13
    wheels put it in nvidia/cu13/bin/, CUDA 12 ones in nvidia/cuda_<name>/bin/."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or spec.submodule_search_locations is None:
        return []
    found: list[Path] = []
    for root in spec.submodule_search_locations:
        found.extend(sorted(Path(root).glob(f"*/bin/{tool}"), reverse=True))  # newest cuNN first
    return found


def sass_text(cubin: str | Path, cuobjdump: str | None = None) -> str:
    """`cuobjdump -sass` of a cubin. cuobjdump calls nvdisasm, found on PATH or through
    $NVDISASM_PATH: pointed at the pip package's (nvidia-cuda-nvdisasm) when PATH has none.
    Raises CudaToolkitUnavailableError without cuobjdump, KernelUnavailableError when it fails."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise CudaToolkitUnavailableError(
            "cuobjdump not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm, or set SPARSEC_CUOBJDUMP)")
    env = dict(os.environ)
    if shutil.which("nvdisasm") is None and "NVDISASM_PATH" not in env:
        beside = Path(tool).with_name("nvdisasm")
        nvdisasm = beside if beside.is_file() else next(iter(_pip_tool_paths("nvdisasm")), None)
        if nvdisasm is not None:
            env["NVDISASM_PATH"] = str(nvdisasm.parent)
    proc = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KernelUnavailableError(f"cuobjdump -sass failed on {Path(cubin).name}: {last.strip()}")
    return proc.stdout


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown"


def cache_root() -> Path:
    root = os.environ.get("SPARSEC_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "sparsec") / "cuda"


def _sources() -> list[Path]:
    # sk_ort_abi.h and sk_ort_util.*: the ORT ABI subset and helpers the custom-op library (kind "ort") uses.
    src = SOURCE_DIR.parent / "src"
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".cu", ".cuh")) + [src / "sk_ort_abi.h", src / "sk_ort_util.h", ORT_UTIL]


def build_key(arch: str, nvcc: str) -> str:
    h = hashlib.sha256()
    for path in _sources():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(" ".join((arch, *FLAGS, nvcc_version(nvcc))).encode())
    return h.hexdigest()[:16]


def _command(nvcc: str, arch: str, kind: str, out: Path) -> list[str]:
    number = arch.split("_", 1)[1]
    src = str(SOURCE_DIR / MAIN_SOURCE)
    if kind == "ptx":
        return [nvcc, *FLAGS, f"-arch=compute_{number}", "-ptx", src, "-o", str(out)]
    if kind == "cubin":
        return [nvcc, *FLAGS, f"-arch={arch}", "-cubin", src, "-o", str(out)]
    # The shared library embeds SASS for the arch and PTX for JIT on newer GPUs.
    gencode = f"-gencode=arch=compute_{number},code=[sm_{number},compute_{number}]"
    sources = [src, str(SOURCE_DIR / ORT_SOURCE), str(ORT_UTIL)] if kind == "ort" else [src]
    return [nvcc, *FLAGS, gencode, "-shared", "-Xcompiler", "-fPIC", *sources, "-o", str(out)]


def build(
    arch: str = "sm_80",
    kinds: tuple[str, ...] = KINDS,
    out_dir: str | Path | None = None,
    nvcc: str | None = None,
) -> CudaBuild:
    """Compile the kernels for one arch; returns the paths of the requested outputs.

    Raises CudaToolkitUnavailableError without nvcc and KernelUnavailableError (message: the
    first compiler error line) when a build fails.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown CUDA arch {arch!r} (known: {', '.join(ARCHS)})")
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown output kinds {sorted(unknown)} (known: {', '.join(ALL_KINDS)})")
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise CudaToolkitUnavailableError("nvcc not found (install the CUDA toolkit or set SPARSEC_NVCC)")
    directory = Path(out_dir) if out_dir is not None else cache_root() / f"{arch}-{build_key(arch, nvcc)}"
    directory.mkdir(parents=True, exist_ok=True)
    names = {"ptx": f"sp24_{arch}.ptx", "cubin": f"sp24_{arch}.cubin", "so": f"libsparsec_cuda_{arch}.so",
             "ort": f"libsparsec_cuda_ort_{arch}.so"}
    files: dict[str, Path] = {}
    for kind in kinds:
        target = directory / names[kind]
        if not target.is_file() or out_dir is not None:
            _compile(nvcc, arch, kind, target)
        files[kind] = target
    return CudaBuild(arch, directory, files)


def _compile(nvcc: str, arch: str, kind: str, target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = _command(nvcc, arch, kind, tmp)
    log.info("nvcc: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
            first = (errors or proc.stderr.splitlines() or ["(no output)"])[0]
            raise KernelUnavailableError(f"nvcc failed building {kind} for {arch}: {first.strip()}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "ALL_KINDS",
    "ARCHS",
    "KINDS",
    "CudaBuild",
    "CudaToolkitUnavailableError",
    "build",
    "find_cuobjdump",
    "find_nvcc",
    "sass_text",
]
