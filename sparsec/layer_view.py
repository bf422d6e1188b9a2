"""A layer seen as a matrix product `Y = X2 @ W2.T`, whatever its op.

Criteria and reconstruction work on `W2 [rows, K]` (rows = outputs, K = the reduction,
with the reduction axis of the stored weight moved last so N:M groups are consecutive
columns) and on the layer's input as rows `X2 [samples, K]` in the same column order:
- MatMul / Gemm: X2 is the activation with its last axis as K (transposed if transA);
- Conv (2-D, any stride/pad/dilation, group 1): X2 is the im2col of the input, columns
  ordered (kh, kw, channel) to match `moveaxis(W, 1, -1)`.
Other layers (grouped or 1-D/3-D convs, ConvTranspose, batched weights, MoE experts) get no input view;
criteria that need input statistics then fall back to magnitude and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.layers import Layer


@dataclass(frozen=True)
class LayerView:
    layer: Layer
    input_name: str | None  # the activation value feeding the layer (None: no input view)
    reason: str | None  # why there is no input view

    @property
    def name(self) -> str:
        return self.layer.name

    def weight2d(self, w: np.ndarray) -> np.ndarray:
        moved = np.moveaxis(w, self.layer.reduction_axis, -1)
        return moved.reshape(moved.shape[0], -1)

    def weight_back(self, w2: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        moved_shape = np.moveaxis(np.empty(shape, dtype=np.uint8), self.layer.reduction_axis, -1).shape
        return np.moveaxis(w2.reshape(moved_shape), -1, self.layer.reduction_axis)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The activation as X2 [samples, K] (float32)."""
        node = self.layer.node
        if node.op_type == "Conv":
            return _im2col(np.asarray(x, dtype=np.float32), node, self.layer.weight.const_value.shape)
        x = np.asarray(x, dtype=np.float32)
        if node.op_type == "Gemm" and _int_attr(node, "transA", 0):
            x = x.T
        return x.reshape(-1, x.shape[-1])


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _ints_attr(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def view_of(layer: Layer) -> LayerView:
    node = layer.node
    x = node.inputs[0]
    w_shape = tuple(layer.weight.const_value.shape)
    reason = None
    if x is None:
        reason = "layer has no activation input"
    elif node.op_type in ("MatMul", "Gemm"):
        if len(w_shape) != 2:
            reason = f"weight of rank {len(w_shape)} (batched weights have no single input view)"
    elif node.op_type == "Conv":
        auto_pad = node.attributes.get("auto_pad")
        if len(w_shape) != 4:
            reason = f"{len(w_shape) - 2}-D convolution (only 2-D has an im2col view)"
        elif _int_attr(node, "group", 1) != 1:
            reason = "grouped convolution (no single input view)"
        elif auto_pad is not None and auto_pad.as_string() not in ("NOTSET", ""):
            reason = f"auto_pad={auto_pad.as_string()}"
    elif node.op_type == "MoE":
        reason = "MoE experts each see only the tokens routed to them (no single input view)"
    else:
        reason = f"{node.op_type} has no input view"
    return LayerView(layer, None if reason else x.name, reason)


def _im2col(x: np.ndarray, node: ir.Node, w_shape: tuple[int, ...]) -> np.ndarray:
    import torch

    _, c, kh, kw = w_shape
    pads = _ints_attr(node, "pads", [0, 0, 0, 0])
    strides = _ints_attr(node, "strides", [1, 1])
    dilations = _ints_attr(node, "dilations", [1, 1])
    # ONNX pads are [top, left, bottom, right]; F.pad wants (left, right, top, bottom).
    t = torch.nn.functional.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
    cols = torch.nn.functional.unfold(t, (kh, kw), dilation=tuple(dilations), stride=tuple(strides))
    n, _, length = cols.shape
    # unfold orders columns (c, kh, kw); W2 orders them (kh, kw, c).
    cols = cols.reshape(n, c, kh, kw, length).permute(0, 4, 2, 3, 1).reshape(n * length, kh * kw * c)
    return cols.numpy()


def bias_of(layer: Layer) -> ir.Value | None:
    """The layer's bias initializer (one value per output row of W2), or None.

    Gemm's C (with alpha = beta = 1), Conv's B, or the initializer a MatMul's only consumer
    `Add`s to it. Only biases used by nothing else qualify, so they can be rewritten in place.
    """
    node = layer.node
    w = layer.weight.const_value
    if w is None:
        return None
    rows = int(np.prod(w.shape)) // int(w.shape[layer.reduction_axis])
    if node.op_type == "Conv":
        rows = int(w.shape[0])
    candidate: ir.Value | None = None
    if node.op_type == "Gemm":
        alpha, beta = node.attributes.get("alpha"), node.attributes.get("beta")
        if (alpha is None or alpha.as_float() == 1.0) and (beta is None or beta.as_float() == 1.0):
            candidate = node.inputs[2] if len(node.inputs) > 2 else None
    elif node.op_type == "Conv":
        candidate = node.inputs[2] if len(node.inputs) > 2 else None
    elif node.op_type == "MatMul" and len(w.shape) == 2:
        uses = node.outputs[0].uses()
        if len(uses) == 1 and uses[0][0].op_type == "Add" and uses[0][0].domain in ("", "ai.onnx"):
            add = uses[0][0]
            candidate = add.inputs[1 - uses[0][1]]
    if candidate is None or not candidate.is_initializer() or candidate.const_value is None:
        return None
    if tuple(candidate.const_value.shape) != (rows,) or len(candidate.uses()) != 1:
        return None
    if candidate.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
        return None
    return candidate


def residual_of(layer: Layer) -> str | None:
    """The skip-connection value a MatMul layer's output (after its bias) is added to, or None."""
    node = layer.node
    if node.op_type != "MatMul":
        return None
    value = node.outputs[0]
    for _ in range(2):  # MatMul -> Add(bias) -> Add(skip), or MatMul -> Add(skip)
        uses = value.uses()
        if len(uses) != 1 or uses[0][0].op_type != "Add" or uses[0][0].domain not in ("", "ai.onnx"):
            return None
        add, index = uses[0]
        other = add.inputs[1 - index]
        if other is None:
            return None
        if other.is_initializer() or other.const_value is not None:
            value = add.outputs[0]  # the bias: look one Add further
            continue
        return other.name
    return None
