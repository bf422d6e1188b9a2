"""`tvm-arm64`: the model compiled by TVM for aarch64 Linux, sparsec's NEON kernels linked in."""

from sparsec.backends.tvm_arm64.backend import TvmArm64Backend

__all__ = ["TvmArm64Backend"]
