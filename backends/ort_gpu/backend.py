"""`ort-gpu`: standard ONNX for onnxruntime-gpu (TensorRT EP with sparse weights, CUDA EP, CPU).

Legalization stores 2:4 weights as plain dense tensors (`legalize-dense`): the layout
TensorRT's sparse-weight support needs. The artifact gains `ort_session.json` (providers and
options). On a machine without a GPU the runner is ONNX Runtime's CPU provider on a copy of
the model with the tensor cores' fp16 rounding emulated (backends/ort_gpu/precision.py), so
fidelity reflects the target precision; latency is not measured.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from sparsec.backends.base import Backend, CompiledModel, Runner, register_backend
from sparsec.backends.ort_gpu.precision import emulate_precision
from sparsec.backends.ort_gpu.session_config import session_config
from sparsec.dialect import DOMAIN
from sparsec.ir.io import model_bytes
from sparsec.layers import trace_weight
from sparsec.pm.pipeline import Pipeline, parse_pipeline
from sparsec.targets import Target

SESSION_FILE = "ort_session.json"
SPARSE_TILE_K = 32  # TensorRT and mma.sp take 2:4 along K in tiles of 32


@register_backend
class OrtGpuBackend(Backend):
    name = "ort-gpu"
    precision = "float16"
    fidelity_note = "compiled model on ORT CPU with fp16 rounding of weights and MatMul/Gemm/Conv inputs and outputs emulated"

    def legalize_pipeline(self) -> Pipeline:
        return parse_pipeline("legalize-dense")

    def check(self, model: ir.Model) -> list[str]:
        return [
            f"op {n.domain}.{n.op_type} (node '{n.name}') has no ONNX Runtime lowering"
            for n in model.graph
            if n.domain == DOMAIN
        ]

    def runner(self, compiled: CompiledModel, threads: int = 2) -> Runner:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No graph optimizations: ORT may fold a fp32->fp16->fp32 Cast pair away.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        emulated = emulate_precision(model_bytes(compiled.model), self.precision)
        session = ort.InferenceSession(emulated, opts, providers=["CPUExecutionProvider"])

        def run(feeds: dict) -> list:
            return session.run(None, feeds)

        return run

    def extra_files(self, model: ir.Model, target: Target) -> dict[str, bytes]:
        sparse, dense = tensor_core_layers(model)
        config = session_config(target.variant or "sm_80", self.precision, sparse, dense)
        return {SESSION_FILE: json.dumps(config, indent=2).encode() + b"\n"}


def tensor_core_layers(model: ir.Model) -> tuple[list[str], dict[str, str]]:
    """Layers whose weight holds 2:4 along K with K a multiple of 32 (sparse tensor cores),
    and the other MatMul/Gemm/Conv layers with the reason they run dense."""
    sparse: list[str] = []
    dense: dict[str, str] = {}
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        layer = trace_weight(node)
        if layer is None or layer.weight.const_value is None:
            continue
        name = node.name or node.outputs[0].name
        w = layer.weight.const_value.numpy()
        axis = layer.reduction_axis % w.ndim
        k = w.shape[axis]
        if k % SPARSE_TILE_K:
            dense[name] = f"K={k} is not a multiple of {SPARSE_TILE_K}"
        elif not is_2_4(w, axis):
            dense[name] = "weight is not 2:4 along K"
        else:
            sparse.append(name)
    return sparse, dense


def is_2_4(w: np.ndarray, axis: int) -> bool:
    moved = np.moveaxis(np.asarray(w), axis, -1)
    groups = moved.reshape(-1, moved.shape[-1] // 4, 4)
    return bool(np.all(np.count_nonzero(groups, axis=-1) <= 2))
