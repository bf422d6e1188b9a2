"""ONNX Runtime backend: legalize `com.sparsec` ops to standard ONNX and run on MLAS.

Sparse kernels (`sparsec.kernels`) plug in here as ONNX Runtime custom ops; until then the
N:M weights are stored dense, so this backend is exact but not faster.
"""

from __future__ import annotations

import onnx_ir as ir
from sparsec.backends.base import Backend, CompiledModel, Runner

from sparsec.dialect import DOMAIN
from sparsec.ir.io import model_bytes
from sparsec.numerics import make_session
from sparsec.pm.pipeline import Pipeline, parse_pipeline


class OrtBackend(Backend):
    name = "ort"

    def legalize_pipeline(self) -> Pipeline:
        return parse_pipeline("legalize-dense")

    def check(self, model: ir.Model) -> list[str]:
        return [
            f"op {n.domain}.{n.op_type} (node '{n.name}') has no ONNX Runtime lowering"
            for n in model.graph
            if n.domain == DOMAIN
        ]

    def runner(self, compiled: CompiledModel, threads: int = 2) -> Runner:
        session = make_session(model_bytes(compiled.model), threads)

        def run(feeds: dict) -> list:
            return session.run(None, feeds)

        return run
