#!/usr/bin/env bash
# One short GPU check for the CUDA 2:4 kernels (issue 14). Run from the repository root on a
# machine with an NVIDIA GPU (sm_80+), nvcc and a CUDA build of torch:
#   bash bench/gpu_check.sh
# 1. builds the kernel library for this GPU's arch (nvcc, cached),
# 2. runs the kernel tests including the GPU ones (pytest -m gpu; they compare the kernels
#    with the dense product and with the CPU emulation of the packed format),
# 3. benchmarks the 2:4 GEMM (4096x4096, batch 2048) and the batch-1 GEMV (4096x11008)
#    against cuBLAS fp16 (torch.matmul), printing JSON,
# 4. times BERT-base and a GPT-2 decode step with their 2:4 layers on the kernel against
#    dense (bench/gpu_models_bench.py; one JSON line per case, skipped cases say why).
# What the machine lacks is reported, not fatal: steps 1-3 print one JSON line with
# "skipped" and the reason when there is no CUDA device or no nvcc; step 4 does its own.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"

# A plain checkout (the device machine has no install of sparsec): the package maps
# sparsec.{kernels,backends,passes,models_zoo} to top-level folders (pyproject.toml), so put
# a link farm with that layout on PYTHONPATH.
if ! "$PY" -c "import sparsec.kernels.cuda_build" 2>/dev/null; then
    farm="$(mktemp -d)/sparsec"
    mkdir -p "$farm"
    for entry in "$PWD"/sparsec/*; do ln -s "$entry" "$farm/"; done
    for sub in kernels backends passes models_zoo; do ln -s "$PWD/$sub" "$farm/$sub"; done
    export PYTHONPATH="$(dirname "$farm")${PYTHONPATH:+:$PYTHONPATH}"
fi

skip() { printf '{"bench": "gpu_check", "step": "%s", "skipped": true, "reason": "%s"}\n' "$1" "$2"; }

nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null || true
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    skip "kernel build, GPU tests, GEMM/GEMV bench" "no CUDA device visible to torch (or torch missing)"
elif ! "$PY" -c "from sparsec.kernels import cuda_build as c; import sys; sys.exit(0 if c.find_nvcc() else 1)"; then
    skip "kernel build, GPU tests, GEMM/GEMV bench" "nvcc not found"
else
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
fi
"$PY" bench/gpu_models_bench.py || skip "BERT-base / GPT-2 decode" "bench/gpu_models_bench.py exited with status $?"
