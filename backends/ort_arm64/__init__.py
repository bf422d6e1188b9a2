"""`ort-arm64`: ONNX Runtime on aarch64 Linux with sparsec's kernel op library cross-compiled."""

from sparsec.backends.ort_arm64.backend import OrtArm64Backend

__all__ = ["OrtArm64Backend"]
