"""Reference models for sparsec: deterministic builders, example inputs and ONNX export."""

from .export import cached_export_ir, export_ir, export_onnx
from .registry import DEFAULT_MODEL, ZOO, UnknownModelError, ZooModel, get

__all__ = [
    "DEFAULT_MODEL",
    "ZOO",
    "UnknownModelError",
    "ZooModel",
    "cached_export_ir",
    "export_ir",
    "export_onnx",
    "get",
]
