"""`tvm-cuda` (`--target=cuda --backend=tvm`): a CUDA model.so built by TVM, compile only here.

Legalization is that of `ort-gpu` (2:4 weights as plain dense tensors, standard ONNX); the
build (build.py) sends eligible 2:4 layers to sparsec's mma.sp kernel as a packed function
and everything else through TVM's dlight GPU schedules. Artifact: `model.so`, `params.bin`
(TVM's param-dict format: main's trailing weight arguments, packed 2:4 weights among them)
and `tvm_signature.json` (inputs, outputs, build, per-layer plan); the manifest's `tvm_cuda`
section repeats the per-layer plan, so a layer that runs dense says why.

This machine has no GPU: fidelity is measured as for `ort-gpu`, on the legalized model on
ONNX Runtime's CPU provider with fp16 rounding of weights and MatMul/Gemm/Conv inputs and
outputs emulated (the 2:4 kernel's fp16 operands and outputs are exactly that; TVM's dense
kernels run fp32, so the emulation rounds more than they do). Latency is not measured.
"""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir

from sparsec.backends.base import Backend, CompiledModel, Runner, register_backend
from sparsec.backends.ort_gpu.backend import OrtGpuBackend
from sparsec.backends.tvm.signature import input_signature
from sparsec.dialect import DOMAIN
from sparsec.errors import UnsupportedError
from sparsec.ir.io import inline_copy, to_proto
from sparsec.kernels import cuda_build
from sparsec.pm.pipeline import Pipeline, parse_pipeline

LIBRARY = "model.so"
PARAMS = "params.bin"
SIGNATURE = "tvm_signature.json"


def toolchain_problem() -> str | None:
    """Why a tvm-cuda compile cannot run here (None: it can)."""
    try:
        import tvm  # noqa: F401
    except ImportError:
        return "apache-tvm is not installed (pip install 'sparsec[tvm]')"
    if cuda_build.find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set SPARSEC_NVCC)"
    return None


@register_backend
class TvmCudaBackend(Backend):
    name = "tvm-cuda"
    fidelity_note = OrtGpuBackend.fidelity_note

    def __init__(self) -> None:
        reason = toolchain_problem()
        if reason is not None:
            raise UnsupportedError(f"--target=cuda --backend=tvm cannot compile here: {reason}")

    def legalize_pipeline(self) -> Pipeline:
        return parse_pipeline("static-input-shapes,legalize-dense")

    def check(self, model: ir.Model) -> list[str]:
        from sparsec.backends.tvm.importer import unsupported_ops

        left = [f"op {n.domain}.{n.op_type} (node '{n.name}') has no TVM lowering" for n in model.graph if n.domain == DOMAIN]
        return left or unsupported_ops(to_proto(model))

    def extra_files(self, model: ir.Model, target: Any) -> dict[str, bytes]:
        import tvm

        from sparsec.backends.tvm_cuda.build import build_cuda_model

        proto = to_proto(inline_copy(model))
        inputs = input_signature(proto, "tvm-cuda")
        built = build_cuda_model(proto, getattr(target, "arch", None) or "sm_80")
        signature = {
            "inputs": inputs,
            "outputs": built.output_names,
            "build": built.info,
            "runs_here": False,
            "sparse_layers": built.plan.sparse,
            "dense_layers": built.plan.dense,
            "tvm_kernels": built.kernels,
        }
        params = tvm.runtime.save_param_dict({f"p{i}": tvm.runtime.tensor(p) for i, p in enumerate(built.params)})
        return {
            LIBRARY: built.library,
            PARAMS: bytes(params),
            SIGNATURE: json.dumps(signature, indent=2).encode() + b"\n",
        }

    def manifest_entries(self, compiled: CompiledModel) -> dict[str, Any]:
        if SIGNATURE not in compiled.files:
            return {}
        sig = json.loads(compiled.files[SIGNATURE])
        return {"tvm_cuda": {
            "library": LIBRARY,
            "arch": sig["build"]["arch"],
            "sparse_layers": {name: "sparsec 2:4 kernel (mma.sp, fp16, fp32 accumulate)" for name in sig["sparse_layers"]},
            "dense_layers": {name: f"dense on TVM (dlight): {why}" for name, why in sig["dense_layers"].items()},
            "tvm_kernels": len(sig["tvm_kernels"]),
            "runs_here": False,
        }}

    def runner(self, compiled: CompiledModel, threads: int = 2) -> Runner:
        # No GPU here: the fp16-emulated CPU reference of ort-gpu (module doc).
        return OrtGpuBackend().runner(compiled, threads)


__all__ = ["TvmCudaBackend", "toolchain_problem"]
