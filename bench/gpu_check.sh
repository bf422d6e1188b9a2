#!/usr/bin/env bash
# One short GPU check for the CUDA 2:4 kernels (issue 14). Run from the repository root on a
# machine with an NVIDIA GPU (sm_80+), nvcc and a CUDA build of torch:
#   bash bench/gpu_check.sh
# 1. builds the kernel library for this GPU's arch (nvcc, cached),
# 2. runs the kernel tests including the GPU ones (pytest -m gpu; they compare the kernels
#    with the dense product and with the CPU emulation of the packed format),
# 3. benchmarks the 2:4 GEMM (4096x4096, batch 2048) and the batch-1 GEMV (4096x11008)
#    against cuBLAS fp16 (torch.matmul), printing JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || true
"$PY" - <<'PYEOF'
import torch
from sparsec.kernels import cuda_build
major, minor = torch.cuda.get_device_capability()
arch = "sm_90" if major >= 9 else ("sm_89" if (major, minor) == (8, 9) else "sm_80")
b = cuda_build.build(arch)
print("built", arch, {k: str(v) for k, v in b.files.items()})
PYEOF
"$PY" -m pytest -q -p no:cacheprovider tests/cuda -m gpu -rs
"$PY" -m pytest -q -p no:cacheprovider tests/cuda -m "not gpu" -x
"$PY" bench/cuda_sp24_bench.py
