"""`tvm-cuda`: the model compiled by TVM for NVIDIA GPUs, sparsec's 2:4 CUDA kernel linked in."""

from sparsec.backends.tvm_cuda.backend import TvmCudaBackend

__all__ = ["TvmCudaBackend"]
