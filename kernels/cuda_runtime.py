"""Call the CUDA 2:4 kernels from Python on torch CUDA tensors (ctypes; needs a GPU).

Used by the GPU tests and bench/gpu_check.sh. torch is imported inside functions only.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from .cuda_build import LIB_SYMBOL, build
from .errors import KernelUnavailableError
from .packing_sparse_tc import PackedSparseTC

_DTYPE_CODE = {"float16": 0, "bfloat16": 1}


class Sp24Library:
    """The built shared library for one arch."""

    def __init__(self, arch: str = "sm_80", path: str | Path | None = None) -> None:
        lib_path = Path(path) if path is not None else build(arch, kinds=("so",)).files["so"]
        self.lib = ctypes.CDLL(str(lib_path))
        fn = getattr(self.lib, LIB_SYMBOL)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 4, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_void_p]
        self._fn = fn

    def to_device(self, packed: PackedSparseTC, device: Any = "cuda") -> tuple[Any, Any]:
        import torch

        values = torch.from_numpy(packed.values.view("int32")).to(device)
        meta = torch.from_numpy(packed.meta.view("int32")).to(device)
        return values, meta

    def matmul(self, packed: PackedSparseTC, weights: tuple[Any, Any], x: Any, out: Any = None) -> Any:
        """Y[batch, C] = x[batch, K] @ W on the current CUDA stream (x fp16/bf16, contiguous)."""
        import torch

        values, meta = weights
        dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(x.dtype)
        if dtype != packed.dtype or x.dim() != 2 or x.shape[1] != packed.k or not x.is_contiguous():
            raise ValueError(f"x must be a contiguous [batch, {packed.k}] {packed.dtype} tensor")
        if out is None:
            out = torch.empty((x.shape[0], packed.cols), dtype=x.dtype, device=x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = self._fn(_DTYPE_CODE[dtype], values.data_ptr(), meta.data_ptr(), x.data_ptr(), out.data_ptr(),
                      packed.cols, packed.k, x.shape[0], stream)
        if rc != 0:
            raise KernelUnavailableError(f"{LIB_SYMBOL} failed with CUDA error {rc}")
        return out
