"""sparsec's C kernels as object files for linking into a TVM model.so.

Deployment choice: the kernels and their TVM FFI entry points (kernels/tvm/sk_tvm_ffi.c)
are compiled with the target's C compiler and linked into the exported model library, so a
model.so is self-contained: it needs the TVM runtime only, not sparsec, Python or a second
library next to it. Kernel symbols are hidden (`-fvisibility=hidden`) so they cannot clash
with the ONNX Runtime op library loaded in the same process; only the `__tvm_ffi_sparsec_*`
entry points are exported, which is where the Relax VM finds `call_dps_packed` targets.

Objects are cached per (compiler, flags, source hash) under ~/.cache/sparsec/tvm-kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sparsec.backends.tvm.target_spec import TvmTargetSpec
from sparsec.errors import UnsupportedError

# Custom-op front ends for ONNX Runtime: not needed inside a TVM library.
_ORT_ONLY = ("sk_ort_ops.c", "sk_ort_util.c", "attn_ort_op.c", "moe_ort.c")


def _kernels_dir() -> Path:
    """kernels/ of the installed package (a wheel ships src/ and tvm/ as package data)."""
    import sparsec.kernels as k

    return Path(k.__file__).resolve().parent


def kernel_sources() -> list[Path]:
    src = _kernels_dir() / "src"
    found = sorted(p for p in src.glob("*.c") if p.name not in _ORT_ONLY)
    glue = _kernels_dir() / "tvm" / "sk_tvm_ffi.c"
    if not found or not glue.is_file():
        raise UnsupportedError(f"backend 'tvm': kernel sources not found under {src.parent} (needed to link model.so)")
    return [*found, glue]


def _ffi_include() -> str:
    import tvm_ffi.libinfo

    return str(tvm_ffi.libinfo.find_include_path())


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
    root = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsec" / "tvm-kernels"
    out = root / f"{spec.name}-{digest.hexdigest()[:16]}"
    objects = [str(out / (src.stem + ".o")) for src in sources]
    if all(Path(o).is_file() for o in objects):
        return objects
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        for src in sources:
            cmd = [spec.cc, *flags, "-c", str(src), "-o", str(tmp / (src.stem + ".o"))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
                raise UnsupportedError(f"backend 'tvm': compiling {src.name} with {spec.cc} failed: {first}")
        with contextlib.suppress(OSError):  # another build finished first: use its objects
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return objects
