"""sparsec's C kernels as object files for linking into a TVM model.so.

Deployment choice: the kernels and their TVM FFI entry points (kernels/tvm_packed/sk_tvm_ffi.c)
are compiled with the target's C compiler and linked into the exported model library, so a
model.so is self-contained: it needs the TVM runtime only, not sparsec, Python or a second
library next to it. Kernel symbols are hidden (`-fvisibility=hidden`) so they cannot clash
with the ONNX Runtime op library loaded in the same process; only the `__tvm_ffi_sparsec_*`
entry points are exported, which is where the Relax VM finds `call_dps_packed` targets.

Objects are cached per (compiler, flags, source hash), see `_cache_root`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sparsec.backends.tvm.target_spec import TvmTargetSpec
from sparsec.errors import UnsupportedError

# The matmul kernels (N:M and block) with their dispatch, scalar paths and thread pool; the
# attention/MoE kernels and the ONNX Runtime op front ends are not called from TVM.
_SOURCES = ("sk_api.c", "sk_pool.c", "sk_scalar.c", "nm_*.c", "block_*.c")


def _kernels_dir() -> Path:
    """kernels/ of the installed package (a wheel ships src/ and tvm_packed/ as package data)."""
    import sparsec.kernels as k

    return Path(k.__file__).resolve().parent


def kernel_sources() -> list[Path]:
    src = _kernels_dir() / "src"
    found = sorted({p for pattern in _SOURCES for p in src.glob(pattern)})
    glue = _kernels_dir() / "tvm_packed" / "sk_tvm_ffi.c"
    if not found or not glue.is_file():
        raise UnsupportedError(f"backend 'tvm': kernel sources not found under {src.parent} (needed to link model.so)")
    return [*found, glue]


def _ffi_include() -> str:
    import tvm_ffi.libinfo

    return str(tvm_ffi.libinfo.find_include_path())


def _cache_root() -> Path:
    """$SPARSEC_TVM_KERNEL_CACHE, else $SPARSEC_CACHE_DIR/tvm-kernels, else ~/.cache/sparsec/tvm-kernels."""
    if os.environ.get("SPARSEC_TVM_KERNEL_CACHE"):
        return Path(os.environ["SPARSEC_TVM_KERNEL_CACHE"])
    base = os.environ.get("SPARSEC_CACHE_DIR")
    return Path(base) / "tvm-kernels" if base else Path.home() / ".cache" / "sparsec" / "tvm-kernels"


def kernel_objects(spec: TvmTargetSpec, cache: Path | None = None) -> list[str]:
    """Paths of the compiled kernel objects for `spec` (built once, then cached)."""
    if shutil.which(spec.cc) is None:
        raise UnsupportedError(f"backend 'tvm': C compiler '{spec.cc}' not found (needed to link the sparse kernels into model.so)")
    sources = kernel_sources()
    include = _ffi_include()
    flags = [*spec.kernel_cflags, "-fPIC", "-fvisibility=hidden", f"-I{sources[0].parent}", f"-I{include}"]
    digest = hashlib.sha256()
    digest.update(" ".join([spec.cc, *flags]).encode())
    for src in sorted(sources) + sorted((sources[0].parent).glob("*.h")):
        digest.update(src.name.encode() + src.read_bytes())
    root = cache or _cache_root()
    out = root / f"{spec.name}-{digest.hexdigest()[:16]}"
    objects = [str(out / (src.stem + ".o")) for src in sources]
    if all(Path(o).is_file() for o in objects):
        return objects
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        def compile_one(src: Path) -> subprocess.CompletedProcess:
            cmd = [spec.cc, *flags, "-c", str(src), "-o", str(tmp / (src.stem + ".o"))]
            return subprocess.run(cmd, capture_output=True, text=True)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = list(pool.map(compile_one, sources))
        for src, done in zip(sources, results, strict=True):
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
                raise UnsupportedError(f"backend 'tvm': compiling {src.name} with {spec.cc} failed: {first}")
        with contextlib.suppress(OSError):  # another build finished first: use its objects
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return objects
