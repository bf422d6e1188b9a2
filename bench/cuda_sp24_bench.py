"""2:4 sparse tensor-core kernels vs cuBLAS fp16 (torch.matmul) on a CUDA GPU; prints JSON.

Cases: GEMM Y[2048, 4096] = X[2048, 4096] @ W[4096, 4096] (M x N x K = 4096 x 4096 x 2048 in
the issue's notation: weight 4096x4096, batch 2048) and batch-1 GEMV with W[4096, 11008]
(in 4096 -> out 11008, Llama-7B's up-projection). Dense and sparse run side by side in one
process on the same stream: warm-up, then the median of 50 CUDA-event-timed runs. The
sparse result is checked against the dense product of the same masked weights first.
Run by bench/gpu_check.sh; needs torch with CUDA and nvcc.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def _time(torch, fn) -> float:  # noqa: ANN001
    from sparsec.bench import cuda_median_ms

    return cuda_median_ms(torch, fn, runs=50, warmup=10)


def case(torch, lib, name: str, k: int, c: int, batch: int) -> dict:  # noqa: ANN001
    from sparsec.kernels import prune_nm
    from sparsec.kernels.packing_sparse_tc import pack_sparse_tc

    rng = np.random.default_rng(0)
    w = prune_nm(rng.standard_normal((k, c)).astype(np.float32), 2, 4)
    packed = pack_sparse_tc(w, "float16")
    weights = lib.to_device(packed)
    wd = torch.from_numpy(w).to("cuda", torch.float16)
    x = torch.randn(batch, k, device="cuda", dtype=torch.float16)
    out = torch.empty(batch, c, device="cuda", dtype=torch.float16)
    ref = torch.matmul(x, wd)
    got = lib.matmul(packed, weights, x, out)
    torch.cuda.synchronize()
    err = float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))
    dense_ms = _time(torch, lambda: torch.matmul(x, wd, out=out))
    sparse_ms = _time(torch, lambda: lib.matmul(packed, weights, x, out))
    flops = 2.0 * batch * k * c
    dense_bytes = k * c * 2 + batch * (k + c) * 2
    sparse_bytes = packed.nbytes + batch * (k + c) * 2
    return {
        "case": name, "k": k, "n_out": c, "batch": batch,
        "dense_ms": round(dense_ms, 5), "sparse_ms": round(sparse_ms, 5),
        "speedup": round(dense_ms / sparse_ms, 3),
        "dense_tflops": round(flops / dense_ms / 1e9, 2), "sparse_tflops_dense_equiv": round(flops / sparse_ms / 1e9, 2),
        "dense_gbps": round(dense_bytes / dense_ms / 1e6, 1), "sparse_gbps": round(sparse_bytes / sparse_ms / 1e6, 1),
        "max_rel_err_vs_dense": err,
        "bar": 1.3 if batch > 1 else 1.5,
    }


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device visible to torch"}))
        return 1
    from sparsec.kernels.cuda_runtime import Sp24Library

    major, minor = torch.cuda.get_device_capability()
    arch = "sm_90" if major >= 9 else ("sm_89" if (major, minor) == (8, 9) else "sm_80")
    lib = Sp24Library(arch)
    results = [
        case(torch, lib, "gemm_4096x4096_batch2048", 4096, 4096, 2048),
        case(torch, lib, "gemv_4096x11008_batch1", 4096, 11008, 1),
    ]
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "capability": f"sm_{major}{minor}", "arch_built": arch,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "protocol": "same process and stream, warm-up 10, median of 50 CUDA-event timings; dense = torch.matmul fp16 (cuBLAS)",
        "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
