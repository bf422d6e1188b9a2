"""The ONNX Runtime backend."""

from sparsec.backends.ort.backend import OrtBackend

__all__ = ["OrtBackend"]
