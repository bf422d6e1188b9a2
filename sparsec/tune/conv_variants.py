"""Tuning variants for Conv layers: ONNX Runtime's dense conv against the NCHWc sparse kernel.

A conv's LayerShape dims are (cout, cin, kh, kw, h, w, stride_h, stride_w, pad_t, pad_l,
pad_b, pad_r); rows is the batch. Both variants hold `copies` convs reading one input. The
dense one is plain ONNX (ORT lays it out in NCHWc with a reorder at each end); the sparse one is
the same model after ORT's layout with the convs on `SparseConvNchwc`
(backends/ort/nchwc_convs.py): the same reorders, so the two differ only in the conv.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec.tune.variants import DENSE, LayerShape, Variant, register_variant


def _prune(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """n of every m input channels per (output channel, tap), as nm-sparsity prunes Conv weights."""
    co, ci, kh, kw = w.shape
    g = np.moveaxis(w, 1, -1).reshape(co, kh, kw, ci // m, m)
    order = np.argsort(np.abs(g), axis=-1)
    np.put_along_axis(g, order[..., : m - n], 0.0, axis=-1)
    return np.ascontiguousarray(np.moveaxis(g.reshape(co, kh, kw, ci), -1, 1))


def _conv_model(shape: LayerShape, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    co, ci, kh, kw, h, w, sh, sw, pt, pl, pb, pr = shape.dims
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    nodes, inits, outputs = [], [], []
    for i in range(shape.copies):
        weight = _prune(rng.standard_normal((co, ci, kh, kw), dtype=np.float32) * 0.1, shape.n, shape.m)
        t = numpy_helper.from_array(weight, f"conv{i}.w")
        b = numpy_helper.from_array(rng.standard_normal(co, dtype=np.float32), f"conv{i}.b")
        nodes.append(helper.make_node("Conv", ["x", t.name, b.name], [f"y{i}"], name=f"conv{i}", kernel_shape=[kh, kw],
                                      strides=[sh, sw], pads=[pt, pl, pb, pr]))
        inits.extend([t, b])
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [shape.rows, co, ho, wo]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.rows, ci, h, w])
    model = helper.make_model(helper.make_graph(nodes, "tune", [x], outputs, inits), opset_imports=[helper.make_opsetid("", 17)])
    return model, {"x": rng.standard_normal((shape.rows, ci, h, w), dtype=np.float32)}


def _build_nchwc(shape: LayerShape, rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs

    model, feeds = _conv_model(shape, rng)
    low = lower_nchwc_convs(model.SerializeToString(), feeds, shape.threads, measure=False)
    return onnx.load_from_string(low.model), feeds


def _nchwc_skip(shape: LayerShape) -> str | None:
    from sparsec.backends.ort.nchwc_convs import nchwc_available

    co, ci = shape.dims[:2]
    if not nchwc_available():
        return "the NCHWc conv kernel needs the built kernels and AVX-512"
    if co % 16 or ci % 16:
        return f"NCHWc blocks of 16 channels: cout={co}, cin={ci}"
    if shape.m % shape.n or 16 % shape.m or 2 * shape.n > shape.m:
        return f"the NCHWc kernel keeps at most 8 of 16 input channels in groups dividing 16, not {shape.n}:{shape.m}"
    return None


register_variant(Variant("conv", DENSE, _conv_model))
register_variant(Variant("conv", "nchwc-kernel", _build_nchwc, _nchwc_skip))
