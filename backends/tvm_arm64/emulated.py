"""A TVM-exported aarch64 library (`main` of its Relax VM) running under qemu user emulation."""

from __future__ import annotations

from pathlib import Path

from sparsec.kernels import aarch64_runtime, cross_build
from sparsec.kernels.pipe_runner import PipeRunner


def emulated_library(library: Path) -> PipeRunner:
    """kernels/tvm_arm/tvm_runner.cc (aarch64, linked against the apache-tvm wheel's runtime)
    serving `library` under qemu."""
    runtime = aarch64_runtime.runtime_dir()
    runner = cross_build.tvm_runner(runtime)
    return PipeRunner([str(runner), str(library)], lib_dirs=[runtime])


__all__ = ["emulated_library"]
