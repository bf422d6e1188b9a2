"""Channel permutations that make sparse convs cheaper on the NCHWc kernel (an exact rewrite).

The NCHWc conv kernel (kernels/src/nchwc_conv_avx512.c) puts 16 output channels in the lanes and
pays, per block of 16 input channels and tap, as many pairs as the fullest of its 16 lanes keeps:
at 80% unstructured ~6 where the mean lane keeps 3.2. Which channels share a block is free where a
conv's output channels only reach per-channel ops and other convs' input channels, like
MobileNetV2's hidden channels (expand conv -> BatchNorm -> Clip -> depthwise conv -> BatchNorm ->
Clip -> project conv): permuting them along that path changes no output. Ordering the producing
conv's output channels by how many inputs they keep groups lanes of similar length in a block.

`balance_conv_lanes` finds such channel paths, permutes a path where the pairs of its convs (the
producer and every conv that reads the channels) fall by at least MIN_SAVING, and reports each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

BLOCK = 16
MIN_SAVING = 0.02
# Ops applied channel by channel: their output is in the same channel order as their input.
_UNARY = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
          "Identity", "Neg", "Abs", "Exp", "Gelu", "Mish", "PRelu"}
_BINARY = {"Add", "Sub", "Mul", "Div"}


@dataclass
class _Path:
    producer: ir.Node
    per_channel: list[tuple[ir.Value, int]]  # (constant, channel axis) to permute along with the channels
    readers: list[ir.Node]  # group-1 Convs reading the channels (weight axis 1)


def pairs(w: np.ndarray) -> int:
    """The kernel's pairs for a [Cout, Cin, KH, KW] weight: per (output block, tap, input block),
    its fullest lane's kept input channels."""
    co, ci = w.shape[:2]
    full = np.zeros((-(-co // BLOCK) * BLOCK, -(-ci // BLOCK) * BLOCK, *w.shape[2:]), bool)
    full[:co, :ci] = w != 0
    blocks = full.reshape(full.shape[0] // BLOCK, BLOCK, full.shape[1] // BLOCK, BLOCK, -1)
    return int(blocks.sum(3).max(1).sum())


def _weight(node: ir.Node) -> np.ndarray | None:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if w is None or w.const_value is None or len(w.const_value.shape) != 4:
        return None
    return w.const_value.numpy()


def _group(node: ir.Node) -> int:
    attr = node.attributes.get("group")
    return int(attr.value) if attr is not None else 1


def _channel_constant(value: ir.Value | None, channels: int) -> int | None:
    """The channel axis of a constant broadcast against an NCHW tensor ([C], [C,1,1], [1,C,1,1]), or
    -1 for a scalar-like constant (nothing to permute), or None if it is neither."""
    if value is None or value.const_value is None:
        return None
    shape = tuple(value.const_value.shape)
    if int(np.prod(shape)) == 1:
        return -1
    for rank, axis in ((1, 0), (3, 0), (4, 1)):
        if len(shape) == rank and shape[axis] == channels and int(np.prod(shape)) == channels:
            return axis
    return None


def _path(producer: ir.Node, channels: int) -> _Path | None:
    """Where the producer's output channels go, if only through per-channel ops to group-1 Convs."""
    path = _Path(producer, [], [])
    todo, seen = [producer.outputs[0]], set()
    while todo:
        value = todo.pop()
        if value.is_graph_output():
            return None
        for node, index in value.uses():
            if id(node) in seen:
                continue
            w = _weight(node)
            if w is not None and index == 0 and _group(node) == 1 and w.shape[1] == channels:
                path.readers.append(node)
                continue
            if w is not None and index == 0 and _group(node) == channels and w.shape[:2] == (channels, 1):
                path.per_channel.append((node.inputs[1], 0))  # depthwise: channel c reads channel c
                if len(node.inputs) > 2 and node.inputs[2] is not None:
                    path.per_channel.append((node.inputs[2], 0))
            elif node.op_type == "BatchNormalization" and index == 0:
                if any(v is None or v.const_value is None for v in node.inputs[1:5]):
                    return None
                path.per_channel.extend((v, 0) for v in node.inputs[1:5])
            elif node.op_type in _UNARY and index == 0:
                for v in node.inputs[1:]:  # Clip's bounds, PRelu's slope
                    axis = _channel_constant(v, channels) if v is not None else -1
                    if axis is None:
                        return None
                    if axis >= 0:
                        path.per_channel.append((v, axis))
            elif node.op_type in _BINARY and len(node.inputs) == 2:
                axis = _channel_constant(node.inputs[1 - index], channels)
                if axis is None:
                    return None
                if axis >= 0:
                    path.per_channel.append((node.inputs[1 - index], axis))
            else:
                return None
            if id(node) not in seen:
                seen.add(id(node))
                todo.extend(node.outputs)
    return path if path.readers else None


def _order(w: np.ndarray) -> np.ndarray:
    """Output channels by their fullest input block, then by all they keep (most first)."""
    kept = np.zeros((w.shape[0], -(-w.shape[1] // BLOCK) * BLOCK, *w.shape[2:]), bool)
    kept[:, : w.shape[1]] = w != 0
    per_block = kept.reshape(w.shape[0], -1, BLOCK, *w.shape[2:]).sum(2).reshape(w.shape[0], -1)
    return np.lexsort((-per_block.sum(1), -per_block.max(1)))


def _permute(value: ir.Value, perm: np.ndarray, axis: int) -> None:
    array = np.take(value.const_value.numpy(), perm, axis=axis)
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)


def balance_conv_lanes(model: ir.Model) -> list[dict[str, Any]]:
    """Permute, in place, the channels of each path where that saves the kernel MIN_SAVING of its
    pairs; one record per path looked at."""
    records = []
    for node in list(model.graph):
        w = _weight(node)
        if w is None or _group(node) != 1:
            continue
        path = _path(node, w.shape[0])
        if path is None:
            continue
        consts = [v for v, _ in path.per_channel] + [r.inputs[1] for r in path.readers] + [
            v for v in node.inputs[1:3] if v is not None]
        if any(v.const_value is None or len(list(v.uses())) != 1 for v in consts):
            continue  # a constant shared with other nodes would be permuted for them too
        perm = _order(w)
        readers = [r.inputs[1].const_value.numpy() for r in path.readers]
        before = pairs(w) + sum(pairs(r) for r in readers)
        after = pairs(w[perm]) + sum(pairs(r[:, perm]) for r in readers)
        record = {"conv": node.name, "channels": int(w.shape[0]), "readers": [r.name for r in path.readers],
                  "pairs_before": before, "pairs_after": after, "permuted": after <= (1 - MIN_SAVING) * before}
        records.append(record)
        if not record["permuted"]:
            continue
        _permute(node.inputs[1], perm, 0)
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const_value is not None:
            _permute(node.inputs[2], perm, 0)
        seen_consts: set[int] = set()
        for value, axis in path.per_channel:
            if id(value) not in seen_consts:
                seen_consts.add(id(value))
                _permute(value, perm, axis)
        for r in path.readers:
            _permute(r.inputs[1], perm, 1)
    return records


__all__ = ["balance_conv_lanes", "pairs"]
