"""Cross-compile sparsec's kernels for aarch64 Linux (NEON) and run aarch64 programs under qemu.

Debian's cross toolchain (`gcc-aarch64-linux-gnu`, `g++-aarch64-linux-gnu`,
`libc6-dev-arm64-cross`) and `qemu-user-static` are what kernels/ci_setup.sh installs. A
toolchain counts as present only when it works: `problem()` compiles and runs a probe, and
names what is missing otherwise (callers turn that into a clean skip or a one-line error).

Outputs go to a content-addressed cache folder (sources, flags and compiler version hashed),
so a second build is free and a half-written file is never seen (temporary name, then rename).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import KernelUnavailableError

log = logging.getLogger("sparsec.kernels.cross")

TRIPLE = "aarch64-linux-gnu"
SYSROOT = Path("/usr") / TRIPLE  # Debian's libc6-arm64-cross: qemu's -L for dynamic programs
SRC = Path(__file__).resolve().parent / "src"
TVM_SRC = Path(__file__).resolve().parent / "tvm_arm"
C_FLAGS = ("-std=c11", "-O3", "-fPIC", "-pthread", "-fno-strict-aliasing")
CXX_FLAGS = ("-std=c++17", "-O2", "-fPIC")
KERNEL_LIBRARY = "libsparsec_kernels.so"


class CrossToolchainError(KernelUnavailableError):
    """The aarch64 cross compiler, its C library or qemu is missing or broken."""


def cc() -> str:
    return os.environ.get("AARCH64_CC", f"{TRIPLE}-gcc")


def cxx() -> str:
    return os.environ.get("AARCH64_CXX", f"{TRIPLE}-g++")


def qemu() -> str:
    return os.environ.get("QEMU_AARCH64", "qemu-aarch64-static")


def cache_root() -> Path:
    """The user cache for downloaded wheels and cross builds ($SPARSEC_AARCH64_CACHE overrides).

    Deliberately not $SPARSEC_CACHE_DIR (fresh per test): everything here is a download or a
    content-addressed build (sources, flags and compiler version in the key), so a warm cache
    can never stand in for code under test."""
    if os.environ.get("SPARSEC_AARCH64_CACHE"):
        return Path(os.environ["SPARSEC_AARCH64_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "sparsec" / "aarch64"


@functools.lru_cache(maxsize=4)
def problem(need_qemu: bool = True, need_cxx: bool = False) -> str | None:
    """Why aarch64 programs cannot be built (and run) here, or None when they can."""
    tools = [cc()] + ([cxx()] if need_cxx else []) + ([qemu()] if need_qemu else [])
    for tool in tools:
        if shutil.which(tool) is None:
            hint = "qemu-user-static" if tool == qemu() else f"{'g++' if tool == cxx() else 'gcc'}-{TRIPLE}"
            return f"{tool} not found (install Debian's {hint}; kernels/ci_setup.sh does)"
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.c"
        probe.write_text('#include <stdio.h>\nint main(void){puts("42");return 0;}\n')
        r = subprocess.run([cc(), str(probe), "-o", f"{d}/probe"], capture_output=True, text=True)
        if r.returncode:
            first = (r.stderr.strip().splitlines() or ["?"])[0]
            return f"{cc()} cannot build a program (is libc6-dev-arm64-cross installed?): {first}"
        if need_qemu:
            r = run_emulated([f"{d}/probe"], capture_output=True, text=True)
            if r.returncode or r.stdout.strip() != "42":
                return f"{qemu()} cannot run an aarch64 program: {(r.stderr.strip().splitlines() or ['?'])[0]}"
    return None


def require(need_qemu: bool = True, need_cxx: bool = False) -> None:
    reason = problem(need_qemu, need_cxx)
    if reason is not None:
        raise CrossToolchainError(f"cannot build for {TRIPLE}: {reason}")


def run_emulated(argv: Sequence[str], *, lib_dirs: Sequence[Path] = (), **kwargs) -> subprocess.CompletedProcess:
    """Run an aarch64 program under qemu user emulation (dynamic ones find libc in SYSROOT)."""
    env = dict(kwargs.pop("env", None) or os.environ)
    env.setdefault("QEMU_LD_PREFIX", str(SYSROOT))
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in lib_dirs)
    return subprocess.run([qemu(), *argv], env=env, **kwargs)


def popen_emulated(argv: Sequence[str], *, lib_dirs: Sequence[Path] = (), guest_env: dict[str, str] | None = None,
                   **kwargs) -> subprocess.Popen:
    """Start an aarch64 program under qemu; `guest_env` is set for the program only (QEMU_SET_ENV),
    so LD_PRELOAD of an aarch64 library never reaches a dynamically linked qemu itself."""
    env = dict(os.environ, QEMU_LD_PREFIX=str(SYSROOT))
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in lib_dirs)
    if guest_env:
        env["QEMU_SET_ENV"] = ",".join(f"{k}={v}" for k, v in guest_env.items())
    return subprocess.Popen([qemu(), *argv], env=env, **kwargs)


def _compiler_version(tool: str) -> str:
    r = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else tool


def _key(*parts: object, files: Sequence[Path] = ()) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _publish(tmp: Path, final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final


def _check(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:300])
        raise CrossToolchainError(f"{Path(cmd[0]).name} failed: {first}")


def kernel_sources() -> list[Path]:
    return sorted(SRC.glob("*.c"))


def kernel_objects() -> list[Path]:
    """Position-independent aarch64 objects of every kernels/src/*.c (for linking into a TVM .so)."""
    require(need_qemu=False)
    headers = sorted(SRC.glob("*.h")) + sorted(SRC.glob("*.inc"))
    out_dir = cache_root() / "obj" / _key(C_FLAGS, _compiler_version(cc()), files=kernel_sources() + headers)
    objs = []
    for src in kernel_sources():
        obj = out_dir / f"{src.stem}.o"
        if not obj.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".{src.stem}.{os.getpid()}.o"
            _check([cc(), *C_FLAGS, "-c", str(src), "-o", str(tmp)])
            _publish(tmp, obj)
        objs.append(obj)
    return objs


def kernel_library() -> Path:
    """The kernel op library (`RegisterCustomOps` for ONNX Runtime, the sk_* C API) for aarch64."""
    objs = kernel_objects()
    lib = objs[0].parent / KERNEL_LIBRARY
    if not lib.is_file():
        tmp = lib.with_name(f".{KERNEL_LIBRARY}.{os.getpid()}")
        _check([cc(), "-shared", "-pthread", *map(str, objs), "-lm", "-o", str(tmp)])
        _publish(tmp, lib)
    return lib


def tvm_ffi_include() -> Path:
    """The host's tvm-ffi C++ headers; the aarch64 runtime must be the same tvm-ffi version."""
    try:
        import tvm_ffi
    except ImportError as e:
        raise CrossToolchainError("the tvm extra is not installed (pip install 'sparsec[tvm]')") from e
    include = Path(tvm_ffi.__file__).resolve().parent / "include"
    if not (include / "tvm" / "ffi" / "function.h").is_file():
        raise CrossToolchainError(f"tvm-ffi headers not found under {include}")
    return include


def tvm_ops_object() -> Path:
    """kernels/tvm_arm/sk_tvm_ops.cc (the kernels as TVM packed functions) for aarch64."""
    require(need_qemu=False, need_cxx=True)
    include = tvm_ffi_include()
    src = TVM_SRC / "sk_tvm_ops.cc"
    out_dir = cache_root() / "obj" / _key(CXX_FLAGS, _compiler_version(cxx()), str(include), files=[src, SRC / "sk.h"])
    obj = out_dir / "sk_tvm_ops.o"
    if not obj.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".sk_tvm_ops.{os.getpid()}.o"
        _check([cxx(), *CXX_FLAGS, f"-I{include}", f"-I{SRC}", "-c", str(src), "-o", str(tmp)])
        _publish(tmp, obj)
    return obj


def tvm_runner(runtime_dir: Path) -> Path:
    """kernels/tvm_arm/tvm_runner.cc linked against the aarch64 TVM runtime in `runtime_dir`."""
    require(need_qemu=False, need_cxx=True)
    include = tvm_ffi_include()
    src = TVM_SRC / "tvm_runner.cc"
    libs = [runtime_dir / "libtvm_runtime.so", runtime_dir / "libtvm_ffi.so"]
    out_dir = cache_root() / "bin" / _key(CXX_FLAGS, _compiler_version(cxx()), str(include), files=[src, *libs])
    exe = out_dir / "sparsec_tvm_runner"
    if not exe.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".sparsec_tvm_runner.{os.getpid()}"
        _check([cxx(), *CXX_FLAGS, f"-I{include}", str(src), "-o", str(tmp), f"-L{runtime_dir}",
                "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN"])
        _publish(tmp, exe)
    return exe


def ort_runner(ort_dir: Path) -> Path:
    """kernels/ort_arm/ort_runner.c linked against the aarch64 libonnxruntime.so in `ort_dir`."""
    require(need_qemu=False)
    src = Path(__file__).resolve().parent / "ort_arm" / "ort_runner.c"
    lib = ort_dir / "libonnxruntime.so.1"
    out_dir = cache_root() / "bin" / _key(C_FLAGS, _compiler_version(cc()), files=[src, lib])
    exe = out_dir / "sparsec_ort_runner"
    if not exe.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".sparsec_ort_runner.{os.getpid()}"
        _check([cc(), "-std=c11", "-O2", str(src), "-o", str(tmp), str(lib), "-Wl,-rpath,$ORIGIN"])
        _publish(tmp, exe)
    return exe


def qemu_cpuinfo_shim() -> Path:
    """kernels/ort_arm/qemu_cpuinfo_shim.c as an aarch64 LD_PRELOAD library (ORT under qemu only)."""
    require(need_qemu=False)
    src = Path(__file__).resolve().parent / "ort_arm" / "qemu_cpuinfo_shim.c"
    out_dir = cache_root() / "obj" / _key(C_FLAGS, _compiler_version(cc()), files=[src])
    lib = out_dir / "qemu_cpuinfo_shim.so"
    if not lib.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".qemu_cpuinfo_shim.{os.getpid()}"
        _check([cc(), "-shared", "-fPIC", "-O2", str(src), "-o", str(tmp), "-ldl"])
        _publish(tmp, lib)
    return lib


__all__ = [
    "KERNEL_LIBRARY", "TRIPLE", "CrossToolchainError", "cache_root", "cc", "cxx", "kernel_library",
    "kernel_objects", "ort_runner", "popen_emulated", "qemu_cpuinfo_shim", "problem", "qemu", "require", "run_emulated", "tvm_ops_object",
    "tvm_runner",
]
