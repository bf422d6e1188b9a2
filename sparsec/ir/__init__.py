"""IR helpers on top of `onnx_ir`, sparsec's one IR."""

from sparsec.ir.io import load_model, model_from_proto, model_hash, save_model, to_proto
from sparsec.ir.printer import print_ir

__all__ = ["load_model", "model_from_proto", "model_hash", "print_ir", "save_model", "to_proto"]
