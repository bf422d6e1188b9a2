"""`tvm-arm64`: TVM-compiled aarch64 library with sparsec's NEON N:M kernels linked in.

Legalization lowers N:M layers to the kernel op (`lower-nm-kernels`) and everything else to
standard ONNX; the result is imported into Relax (`relax_import`), compiled by TVM for
`aarch64-linux-gnu` +neon and cross-linked with the kernels (`library`). Every eligible N:M
layer from 4096 weights up goes to the kernel at any row count: the x86 thresholds of the `ort`
backend were measured against MLAS, while TVM's default CPU pipeline leaves dense ops
unscheduled (nothing was measured on ARM hardware).

Fidelity runs the very library of the artifact under qemu user emulation, so a compile needs
the cross toolchain, qemu and the aarch64 TVM runtime wheel (downloaded once by platform);
without them the compile stops with one line naming what is missing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparsec.backends.base import Backend, CompiledModel, Runner, register_backend
from sparsec.backends.ort.sparse_ops import NM_OP
from sparsec.backends.tvm_arm64.deploy import deploy_md
from sparsec.dialect import DOMAIN
from sparsec.errors import UnsupportedError
from sparsec.ir.io import inline_copy, to_proto
from sparsec.kernels import aarch64_runtime, cross_build
from sparsec.pm.pipeline import Pipeline, parse_pipeline
from sparsec.runtime import KERNEL_DOMAIN
from sparsec.targets import Target

LIBRARY = "model.so"
RUNNER = "sparsec_tvm_runner"
DEPLOY = "DEPLOY.md"
BUILD_INFO = "tvm_build.json"


def toolchain_problem() -> str | None:
    """Why a tvm-arm64 compile cannot run here (None: it can)."""
    try:
        import tvm  # noqa: F401
    except ImportError:
        return "TVM is not installed (pip install 'sparsec[tvm]')"
    reason = cross_build.problem(need_qemu=True, need_cxx=True)
    if reason is not None:
        return reason
    try:
        aarch64_runtime.runtime_dir()
    except cross_build.CrossToolchainError as e:
        return str(e)
    return None


@register_backend
class TvmArm64Backend(Backend):
    name = "tvm-arm64"
    fidelity_note = "the artifact's aarch64 model.so run under qemu-aarch64 user emulation (TVM runtime of the apache-tvm aarch64 wheel)"

    def __init__(self) -> None:
        reason = toolchain_problem()
        if reason is not None:
            raise UnsupportedError(f"--target=arm64 --backend=tvm cannot compile here: {reason}")

    def legalize_pipeline(self) -> Pipeline:
        return parse_pipeline("lower-nm-kernels{min_params=4096 max_rows_half=2147483647},legalize-dense")

    def check(self, model: ir.Model) -> list[str]:
        from sparsec.backends.tvm_arm64.relax_import import unsupported_ops

        left = [f"op {n.domain}.{n.op_type} (node '{n.name}') has no TVM lowering" for n in model.graph if n.domain == DOMAIN]
        return left or unsupported_ops(to_proto(model))

    def runtime_ops(self, model: ir.Model) -> list[str]:
        return sorted({n.op_type for n in model.graph if n.domain == KERNEL_DOMAIN})

    def extra_files(self, model: ir.Model, target: Target) -> dict[str, bytes]:
        from sparsec.backends.tvm_arm64.library import TARGET, build_library
        from sparsec.backends.tvm_arm64.relax_import import to_relax

        with tempfile.TemporaryDirectory() as work:
            lib = Path(work) / LIBRARY
            try:
                timings = build_library(to_relax(to_proto(inline_copy(model))), lib)  # TVM reads weights from the proto
            except cross_build.CrossToolchainError as e:
                raise UnsupportedError(str(e)) from None
            runner = cross_build.tvm_runner(aarch64_runtime.runtime_dir())
            kernel_layers = sum(1 for n in model.graph if n.domain == KERNEL_DOMAIN and n.op_type == NM_OP)
            info = {"tvm_target": TARGET, "kernel_layers": kernel_layers, **timings,
                    "runtime": aarch64_runtime.versions()}
            return {
                LIBRARY: lib.read_bytes(),
                RUNNER: runner.read_bytes(),
                DEPLOY: deploy_md(json.dumps(TARGET), kernel_layers, _inputs(model), aarch64_runtime.versions()),
                BUILD_INFO: (json.dumps(info, indent=2) + "\n").encode(),
            }

    def runner(self, compiled: CompiledModel, threads: int = 2) -> Runner:
        from sparsec.backends.tvm_arm64.emulated import emulated_library

        work = Path(tempfile.mkdtemp(prefix="sparsec-arm64-"))
        (work / LIBRARY).write_bytes(compiled.files[LIBRARY])
        library = emulated_library(work / LIBRARY)
        names = [v.name for v in compiled.model.graph.inputs]

        def run(feeds: dict) -> list:
            outputs, _, _ = library.run([np.asarray(feeds[n]) for n in names])
            return outputs

        # The qemu process and the temporary library go when the runner does.
        weakref.finalize(run, _cleanup, library, work)
        return run


def _cleanup(library, work: Path) -> None:
    library.close()
    shutil.rmtree(work, ignore_errors=True)


def _inputs(model: ir.Model) -> list[tuple[str, list[int], str]]:
    out = []
    for v in model.graph.inputs:
        dims = [d if isinstance(d, int) else 1 for d in (v.shape or [])]
        dtype = v.dtype.numpy().name if v.dtype is not None else "float32"
        out.append((v.name, dims, dtype))
    return out


__all__ = ["TvmArm64Backend", "toolchain_problem"]
