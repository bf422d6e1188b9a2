"""A depthwise conv run inside the sparse 1x1 conv that reads it (MobileNet's inverted residual).

In ONNX Runtime's laid-out model an inverted residual block is expand (1x1), depthwise (3x3,
group = channels), project (1x1): the depthwise output, 6x the block's channels, goes to memory
and is read back by the project conv, and its op call costs as much again on small planes.
When the project conv is on the kernel (`SparseConvNchwc`) and is the depthwise output's only
reader, the kernel computes the depthwise outputs of each output row itself into a per-thread
buffer (`has_dw`, kernels/src/nchwc_conv_avx512.c, nchwc_dw_avx512.c) and the depthwise node
goes away. Exact up to the
order of float additions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsec.backends.ort.nchwc_convs import ACTIVATIONS, BLOCK, NCHWC_DOMAIN, node_attrs

MAX_TAPS = 64  # the kernel's tap tables


@dataclass
class DepthwiseFusion:
    dw: onnx.NodeProto  # the laid-out depthwise Conv
    weight: np.ndarray  # [ib, kh, kw, 16]: the kernel's layout (ORT's NCHWc depthwise layout)
    bias: np.ndarray | None  # [ib * 16]


def _ort_depthwise(reordered: np.ndarray) -> np.ndarray:
    """ORT's NCHWc depthwise weight (OIHWBo, dims [C, 1, KH, KW], memory [C/16][1][KH][KW][16])
    as the kernel's [C/16, KH, KW, 16]: the same memory."""
    c, _, kh, kw = reordered.shape
    return np.ascontiguousarray(reordered.reshape(c // BLOCK, kh, kw, BLOCK), dtype=np.float32)


def find_depthwise(m: onnx.ModelProto, sparse: dict[str, onnx.NodeProto]) -> dict[str, DepthwiseFusion]:
    """Per sparse node (by output name) that is a 1x1 stride-1 conv: the depthwise conv whose
    output it alone reads, if the kernel can run it (constant weight, channels in whole blocks,
    ReLU/Clip or no activation, no fused sum)."""
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in m.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    graph_outputs = {o.name for o in m.graph.output}
    found: dict[str, DepthwiseFusion] = {}
    for out, node in sparse.items():
        a = node_attrs(node)
        if (a["kh"], a["kw"], a["stride_h"], a["stride_w"]) != (1, 1, 1, 1) or any(
                a[p] for p in ("pad_t", "pad_l", "pad_b", "pad_r")):
            continue
        dw = producers.get(node.input[0])
        if dw is None or dw.domain != NCHWC_DOMAIN or dw.op_type != "Conv" or len(dw.output) != 1:
            continue
        if readers.get(dw.output[0], 0) != 1 or dw.output[0] in graph_outputs:
            continue
        d = node_attrs(dw)
        w = inits.get(dw.input[1]) if len(dw.input) > 1 else None
        if w is None or len(w.dims) != 4:
            continue
        c, one, kh, kw = w.dims
        if one != 1 or d.get("group", 1) != c or c % BLOCK or c != a["cin"] or kh * kw > MAX_TAPS:
            continue
        if d.get("activation", "") not in ACTIVATIONS or d.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            continue
        if len(dw.input) > 3 and dw.input[3]:  # a fused sum: not a plain depthwise conv
            continue
        bias = None
        if len(dw.input) > 2 and dw.input[2]:
            if dw.input[2] not in inits:
                continue
            bias = numpy_helper.to_array(inits[dw.input[2]]).astype(np.float32).reshape(-1)
        found[out] = DepthwiseFusion(dw, _ort_depthwise(numpy_helper.to_array(w)), bias)
    return found


def fused_node(node: onnx.NodeProto, f: DepthwiseFusion, names: tuple[str, str]) -> onnx.NodeProto:
    """`node` (SparseConvNchwc, 1x1) reading the depthwise conv's input, with its weights as
    inputs 6 and 7 (names) and its geometry as dw_* attributes."""
    d = node_attrs(f.dw)
    strides, pads, dil = d.get("strides", [1, 1]), d.get("pads", [0, 0, 0, 0]), d.get("dilations", [1, 1])
    clip = list(d.get("activation_params", [])) or [0.0, 6.0]
    inputs = list(node.input) + [""] * (6 - len(node.input))
    inputs[0] = f.dw.input[0]
    inputs += [names[0], names[1] if f.bias is not None else ""]
    out = helper.make_node(node.op_type, inputs, list(node.output), name=node.name, domain=node.domain)
    out.attribute.extend(node.attribute)
    out.attribute.extend([
        helper.make_attribute("has_dw", 1), helper.make_attribute("dw_kh", f.weight.shape[1]),
        helper.make_attribute("dw_kw", f.weight.shape[2]), helper.make_attribute("dw_stride_h", strides[0]),
        helper.make_attribute("dw_stride_w", strides[1]), helper.make_attribute("dw_pad_t", pads[0]),
        helper.make_attribute("dw_pad_l", pads[1]), helper.make_attribute("dw_pad_b", pads[2]),
        helper.make_attribute("dw_pad_r", pads[3]), helper.make_attribute("dw_dil_h", dil[0]),
        helper.make_attribute("dw_dil_w", dil[1]),
        helper.make_attribute("dw_act", ACTIVATIONS[d.get("activation", "")]),
        helper.make_attribute("dw_has_bias", int(f.bias is not None)),
        helper.make_attribute("dw_clip_lo", float(clip[0])), helper.make_attribute("dw_clip_hi", float(clip[1]))])
    return out


def fused_initializers(f: DepthwiseFusion, names: tuple[str, str]) -> list[onnx.TensorProto]:
    out = [numpy_helper.from_array(f.weight.reshape(-1), names[0])]
    if f.bias is not None:
        out.append(numpy_helper.from_array(f.bias, names[1]))
    return out


__all__ = ["DepthwiseFusion", "find_depthwise", "fused_initializers", "fused_node"]
