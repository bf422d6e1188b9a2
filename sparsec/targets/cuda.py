"""The NVIDIA GPU target: 2:4 sparse tensor cores (Ampere sm_80 and later).

What it accelerates: 2:4 sparsity on the reduction axis (K) of MatMul/Gemm/Conv weights,
fp16/bf16 operands with fp32 accumulation (`mma.sp`; TensorRT's sparse weights; sparsec's
own kernels in kernels/cuda/). Other N:M patterns and block sparsity have no hardware path
and run dense. K must be a multiple of the sparse tile: 32 for one `mma.sp.m16n8k32`, 64 for
sparsec's kernels (one metadata register spans two tiles), so crops keep widths in multiples
of 64 as well. Deployment today goes through ONNX Runtime's TensorRT EP (backend `ort-gpu`, the default);
`--backend=tvm` builds a CUDA model.so with TVM and sparsec's 2:4 kernel (`tvm-cuda`).

Roofline constants are nominal datasheet values derated to what dense cuBLAS fp16 sustains
(about 80% of tensor-core peak, 85% of DRAM bandwidth); they feed the predicted-latency
column only. Nothing here was measured: this machine has no GPU.
"""

from __future__ import annotations

from typing import ClassVar

from sparsec.targets import Target, register_target

# arch -> (sustained dense fp16 tensor-core GFLOP/s, sustained DRAM GB/s, example part)
ROOFLINE: dict[str, tuple[float, float, str]] = {
    "sm_80": (250_000.0, 1_700.0, "A100 SXM 80GB: 312 TFLOP/s fp16 dense, 2039 GB/s"),
    "sm_89": (145_000.0, 730.0, "L40S: 181 TFLOP/s fp16 dense (fp32 accumulate), 864 GB/s"),
    "sm_90": (790_000.0, 2_850.0, "H100 SXM: 989 TFLOP/s fp16 dense, 3350 GB/s"),
}
SPARSE_TILE_K = 32  # mma.sp.m16n8k32: dense K columns per sparse MMA
KERNEL_K_MULTIPLE = 64  # sparsec's CUDA kernels: one metadata register per two K tiles


@register_target
class CudaTarget(Target):
    name = "cuda"
    backend = "ort-gpu"
    backends: ClassVar[dict[str, str]] = {"ort": "ort-gpu", "tvm": "tvm-cuda"}
    variants = tuple(ROOFLINE)
    default_variant = "sm_80"
    channel_multiple = KERNEL_K_MULTIPLE
    sparse_k_multiple = SPARSE_TILE_K
    patterns = frozenset({"nm"})  # 2:4 only, see accelerates_nm
    ops = frozenset({"NMSparse"})
    measured_here = False
    not_measured_reason = "not measured: no CUDA device"
    precision: ClassVar[str] = "float16"  # operands on the tensor cores; fp32 accumulate

    def __init__(self, variant: str | None = None) -> None:
        super().__init__(variant)
        self.peak_gflops, self.dram_gbps, self.part = ROOFLINE[self.arch]

    @property
    def arch(self) -> str:
        assert self.variant is not None
        return self.variant

    def accelerates_nm(self, n: int, m: int, k: int) -> bool:
        """Whether an n:m weight with reduction length k runs on the sparse tensor cores."""
        return (n, m) in ((2, 4), (1, 4)) and k % SPARSE_TILE_K == 0 and k > 0

    def __repr__(self) -> str:
        return f"<target cuda ({self.arch}): backend {self.backend}>"
