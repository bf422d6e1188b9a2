"""ONNX Runtime backend: dense ops on MLAS, N:M layers on sparsec's kernels.

`com.sparsec` ops are legalized in two steps: N:M MatMul/Gemm layers the kernels take become
ONNX Runtime custom ops (`lower-nm-kernels`); everything else is lowered to standard ONNX
with the pruned weights stored dense (`legalize-dense`). Without a compiled kernel library
the first step is left out and the model is plain ONNX.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from sparsec.backends.base import Backend, CompiledModel, Runner, register_backend
from sparsec.backends.ort.op_library import (
    LIBRARY_FILE,
    MANIFEST_KEY,
    deployable_library,
    host_arch,
    manifest_entry,
)
from sparsec.dialect import DOMAIN
from sparsec.ir.session import session_from_ir
from sparsec.pm.pipeline import Pipeline, parse_pipeline
from sparsec.runtime import KERNEL_DOMAIN

log = logging.getLogger("sparsec.backends.ort")


@register_backend
class OrtBackend(Backend):
    name = "ort"

    def __init__(self, kernels: bool | None = None) -> None:
        if kernels is None:
            from sparsec.kernels import kernels_available

            kernels = kernels_available()
            if not kernels:
                log.warning("sparsec kernels are not built: N:M layers will run dense")
        self.kernels = kernels

    def legalize_pipeline(self) -> Pipeline:
        return parse_pipeline(
            "lower-nm-kernels,lower-conv-kernels,lower-attention-kernels,lower-moe-kernels,legalize-dense,lower-conv-nchwc"
            if self.kernels else "legalize-dense"
        )

    def check(self, model: ir.Model) -> list[str]:
        return [
            f"op {n.domain}.{n.op_type} (node '{n.name}') has no ONNX Runtime lowering"
            for n in model.graph
            if n.domain == DOMAIN
        ]

    def runtime_ops(self, model: ir.Model) -> list[str]:
        return sorted({n.op_type for n in model.graph if n.domain == KERNEL_DOMAIN})

    def extra_files(self, model: ir.Model, target: Any) -> dict[str, bytes]:
        # The op library travels with a model that needs it: plain ONNX Runtime (C, C++,
        # C#, Java, Python without sparsec) registers it and runs the artifact.
        # Only the host's build is at hand: a target for another architecture ships its own.
        if not self.runtime_ops(model) or getattr(target, "arch", None) not in (None, host_arch()):
            return {}
        return {LIBRARY_FILE: deployable_library()}

    def manifest_entries(self, compiled: CompiledModel) -> dict[str, Any]:
        data = compiled.files.get(LIBRARY_FILE)
        return {} if data is None else {MANIFEST_KEY: manifest_entry(data, compiled.runtime_ops)}

    def runner(self, compiled: CompiledModel, threads: int = 2, allow_spinning: bool | None = None) -> Runner:
        # Weights handed to ORT in place: no serialized copy, no 2 GB protobuf limit.
        session = session_from_ir(compiled.model, threads, custom_ops=bool(compiled.runtime_ops),
                                  allow_spinning=allow_spinning)

        def run(feeds: dict) -> list:
            return session.run(None, feeds)

        return run

    def setting_runners(self, compiled: CompiledModel, threads: int = 2) -> dict[str, tuple[dict, Runner]]:
        # ORT's pool spinning helps back-to-back ops of one session (tiny models: no futex wake
        # per parallel section) and hurts when it holds the cores the kernel pool needs.
        return {
            f"spinning {'on' if spin else 'off'}": (
                {"allow_spinning": int(spin), "intra_op_num_threads": threads, "inter_op_num_threads": 1,
                 **({"kernel_threads": threads} if compiled.runtime_ops else {})},
                self.runner(compiled, threads, allow_spinning=spin),
            )
            for spin in (False, True)
        }
