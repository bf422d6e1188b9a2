"""sparsec: a compiler for sparse neural networks.

Capture a model (ONNX file or PyTorch module) into one IR (`onnx_ir.Model`), analyse it,
rewrite it with passes, lower it to a backend that runs faster, and export an artifact.

    import sparsec
    model = sparsec.load("model.onnx")            # or sparsec.from_torch(module, inputs)
    result = sparsec.compile_model(model, sparsec.CompileOptions(sparsity="2:4"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from sparsec.capture import from_onnx as load  # noqa: E402
from sparsec.capture import from_torch  # noqa: E402
from sparsec.compiler import CompileOptions, CompileResult, compile_file, compile_model  # noqa: E402
from sparsec.errors import SparsecError  # noqa: E402
from sparsec.pm import PassContext, PassManager, Pipeline, parse_pipeline  # noqa: E402

__all__ = [
    "CompileOptions",
    "CompileResult",
    "PassContext",
    "PassManager",
    "Pipeline",
    "SparsecError",
    "__version__",
    "compile_file",
    "compile_model",
    "from_torch",
    "load",
    "parse_pipeline",
]
