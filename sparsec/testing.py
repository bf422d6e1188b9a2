"""Helpers for tests: tiny models from ONNX text, and IR comparisons."""

from __future__ import annotations

from collections.abc import Sequence

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


def mlp_model(batch: int | str, widths: Sequence[int], *, gemm_first: bool = False, name: str = "mlp") -> ir.Model:
    """The tests' MLP: x [batch, widths[0]] -> layers with Relu between them -> y [batch, widths[-1]].

    Layer i multiplies by w{i} (seeded), giving h (h{i} from the second layer on; the last
    gives y) and r / r{i} after the Relu; with `gemm_first` layer 1 is Gemm<transB=1>(x, w1,
    b1) (w1 stored [out, in]). Seeds count up from 1 in order of appearance: w1, (b1), w2, ...
    """
    layers = len(widths) - 1
    lines, weights = [], {}
    x, seed = "x", 1
    for i in range(1, layers + 1):
        out = "y" if i == layers else ("h" if i == 1 else f"h{i}")
        if i == 1 and gemm_first:
            lines.append(f"{out} = Gemm <transB = 1> ({x}, w1, b1)")
            weights["w1"], weights["b1"] = seeded((widths[1], widths[0]), seed), seeded((widths[1],), seed + 1)
            seed += 2
        else:
            lines.append(f"{out} = MatMul({x}, w{i})")
            weights[f"w{i}"] = seeded((widths[i - 1], widths[i]), seed)
            seed += 1
        if i < layers:
            x = "r" if i == 1 else f"r{i}"
            lines.append(f"{x} = Relu({out})")
    body = "\n".join(f"  {line}" for line in lines)
    text = (f'<ir_version: 10, opset_import: ["" : 18]>\n{name} (float[{batch},{widths[0]}] x) => '
            f"(float[{batch},{widths[-1]}] y) {{\n{body}\n}}")
    return make_model(text, **weights)
