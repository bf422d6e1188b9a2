"""`ort-arm64`: ONNX Runtime on aarch64 Linux, sparsec's kernel op library cross-compiled.

The model is legalized exactly as for the x86 `ort` backend (kernel custom ops of domain
`com.sparsec.kernels`); the artifact carries `libsparsec_kernels.so` built from the same C
sources for `aarch64-linux-gnu` (NEON), and a DEPLOY.md. Fidelity is measured here with the
x86 build of those sources in ONNX Runtime (the aarch64 library is built but not run by a
compile); `sparsec.backends.ort_arm64.check_library` loads it under qemu when asked.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from sparsec.backends.base import CompiledModel, register_backend
from sparsec.backends.ort.backend import OrtBackend
from sparsec.backends.ort.sparse_ops import NM_OP
from sparsec.backends.ort_arm64.deploy import deploy_md
from sparsec.errors import UnsupportedError
from sparsec.kernels import cross_build
from sparsec.runtime import KERNEL_DOMAIN
from sparsec.targets import Target

LIBRARY = cross_build.KERNEL_LIBRARY
DEPLOY = "DEPLOY.md"


@register_backend
class OrtArm64Backend(OrtBackend):
    name = "ort-arm64"
    fidelity_note = "compiled model on ORT x86 with the x86 build of the same kernel sources (the aarch64 library is not run)"

    def __init__(self, kernels: bool | None = None) -> None:
        reason = cross_build.problem(need_qemu=False)
        if reason is not None:
            raise UnsupportedError(f"--target=arm64 cannot compile here: {reason}")
        super().__init__(kernels)

    def extra_files(self, model: ir.Model, target: Target) -> dict[str, bytes]:
        try:
            lib = cross_build.kernel_library()
        except cross_build.CrossToolchainError as e:
            raise UnsupportedError(str(e)) from None
        layers = sum(1 for n in model.graph if n.domain == KERNEL_DOMAIN and n.op_type == NM_OP)
        return {LIBRARY: lib.read_bytes(), DEPLOY: deploy_md(layers)}

    def manifest_entries(self, compiled: CompiledModel) -> dict[str, Any]:
        # The shipped library is the aarch64 build: the x86 runtime must not load it (it
        # falls back to the installed x86 kernels), and its identity is not the host's.
        entries = super().manifest_entries(compiled)
        entry = entries.get("kernel_library")
        if entry is not None:
            entry.update(arch="aarch64", isa="NEON (aarch64-linux-gnu)", info=None)
        return entries


__all__ = ["OrtArm64Backend"]
