"""The ONNX Runtime backend (importing it registers the backend and its passes)."""

from sparsec.backends.ort import (  # noqa: F401  (register the passes)
    lower_attention,
    lower_conv_kernels,
    lower_conv_nchwc,
    lower_moe_kernels,
    lower_nm_kernels,
)
from sparsec.backends.ort.backend import OrtBackend

__all__ = ["OrtBackend"]
