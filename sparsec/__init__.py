"""sparsec: a compiler for sparse neural networks.

Capture a model (ONNX file or PyTorch module) into one IR (`onnx_ir.Model`), analyse it,
rewrite it with passes, lower it to a backend that runs faster, and export an artifact.
"""

from __future__ import annotations

__version__ = "0.1.0"

from sparsec.errors import SparsecError  # noqa: E402

__all__ = ["SparsecError", "__version__"]
