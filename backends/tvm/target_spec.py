"""What a TVM build is for: the LLVM target, the C compiler that builds the kernel objects
and links model.so, and whether the result runs on this machine.

This is the one place a new CPU architecture plugs in (the aarch64 target adds a spec with
`mtriple=aarch64-linux-gnu`, `+neon` and the cross `gcc`); everything else in
backends/tvm takes a `TvmTargetSpec`.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TvmTargetSpec:
    name: str  # "x86_64", "aarch64": recorded in the manifest
    llvm: dict[str, Any]  # TVM target as a JSON dict: {"kind": "llvm", "mtriple": ..., "mcpu": ..., "mattr": [...]}
    cc: str = "gcc"  # compiles the kernel sources and links model.so
    kernel_cflags: tuple[str, ...] = field(default=("-O3", "-std=c11", "-pthread", "-fno-strict-aliasing"))
    runs_here: bool = True  # False for cross builds: fidelity and latency are measured elsewhere
    # For builds that do not run here: (artifact files, threads) -> run(feeds) -> outputs, e.g.
    # a runner that executes model.so under qemu. None: such a build cannot be run by compile.
    make_runner: Callable[[dict[str, bytes], int], Callable[[dict], list]] | None = None

    def tvm_target(self) -> Any:
        import tvm

        return tvm.target.Target(self.llvm)


@functools.lru_cache(maxsize=1)
def host_spec(threads: int = 2) -> TvmTargetSpec:
    """This machine: LLVM code for the host CPU (its own vector width), gcc."""
    import tvm

    cpu = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()
    triple = tvm.get_global_func("tvm.codegen.llvm.GetDefaultTargetTriple")()
    llvm = {"kind": "llvm", "mtriple": str(triple), "mcpu": str(cpu), "num-cores": threads}
    name = "x86_64" if platform.machine() in ("x86_64", "AMD64") else platform.machine()
    return TvmTargetSpec(name=name, llvm=llvm)
