"""Compile a Relax module for aarch64 Linux (NEON) and export it as one shared library.

The library holds the compiled model and, linked in, sparsec's kernels (kernels/src/*.c for
aarch64) with their TVM packed-function wrappers (kernels/tvm_arm/sk_tvm_ops.cc). It loads
into the aarch64 TVM runtime (`libtvm_runtime.so` of the `apache-tvm` aarch64 wheel) like
any TVM-exported library: `tvm.runtime.load_module` + `relax.VirtualMachine` in Python, or
kernels/tvm_arm/tvm_runner.cc without Python.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from sparsec.kernels import cross_build

log = logging.getLogger("sparsec.backends.tvm_arm64")

# The TVM target of the library (TVM 0.27 takes JSON-like dicts).
TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def build_library(mod: Any, out_path: Path) -> dict[str, float]:
    """Compile `mod` (a Relax IRModule) for aarch64 and write the .so to `out_path`.

    Returns timings in seconds (TVM build, cross link).
    """
    import tvm
    from tvm.support import cc

    objects = [*cross_build.kernel_objects(), cross_build.tvm_ops_object()]
    t0 = time.perf_counter()
    executable = tvm.compile(mod, target=tvm.target.Target(TARGET))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work) / "model.so"
        executable.export_library(
            str(tmp),
            fcompile=cc.cross_compiler(cross_build.cxx(), options=["-pthread", "-lm"]),
            addons=[str(o) for o in objects],
            workspace_dir=work,
        )
        Path(out_path).write_bytes(tmp.read_bytes())
    t2 = time.perf_counter()
    log.info("TVM aarch64 library: build %.1f s, cross link %.1f s", t1 - t0, t2 - t1)
    return {"tvm_build_s": round(t1 - t0, 3), "link_s": round(t2 - t1, 3)}


__all__ = ["TARGET", "build_library"]
