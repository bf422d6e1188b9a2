"""Helpers for tests: tiny models from ONNX text, and IR comparisons."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir

from sparsec.ir.printer import print_ir


def make_model(text: str, **initializers: np.ndarray) -> ir.Model:
    """Build an IR model from ONNX text (onnx.parser syntax) plus named initializers."""
    proto = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name=name))
    return ir.serde.deserialize_model(proto)


def graph_text(model: ir.Model) -> str:
    """The printed IR without the header line, for Before/Expected comparisons."""
    return print_ir(model).split("\n", 1)[1]


def seeded(shape: tuple[int, ...], seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
