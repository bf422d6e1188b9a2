"""The ONNX Runtime backend (importing it registers the backend and its passes)."""

from sparsec.backends.ort import lower_attention, lower_moe_kernels, lower_nm_kernels  # noqa: F401  (register the passes)
from sparsec.backends.ort.backend import OrtBackend

__all__ = ["OrtBackend"]
