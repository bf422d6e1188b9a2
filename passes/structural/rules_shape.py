"""Rules for ops that move, split, join or re-index axes: Transpose, Reshape/Flatten/
Squeeze/Unsqueeze (split and merged axes become products), Concat, Split, Slice, Gather,
Expand, Tile, Pad, Resize, Shape, Constant. Their crop actions rewrite shape constants."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.passes.structural.coupling import CouplingBuilder
from sparsec.passes.structural.rules import (
    RuleUnsupported,
    attr_int,
    attr_ints,
    const,
    input_at,
    replace_const_input,
    rule,
)


@rule("Transpose")
def transpose(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = len(b.shape(x))
    perm = attr_ints(node, "perm") or list(range(rank))[::-1]
    for k, p in enumerate(perm):
        b.link(b.axis(y, k), b.axis(x, p))


def factorize(ins: tuple[int, ...], outs: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Segments (input axes, output axes) of a reshape whose sizes have equal products.

    Size-1 axes are left out; they carry no channels.
    """
    ia = [k for k, s in enumerate(ins) if s != 1]
    oa = [k for k, s in enumerate(outs) if s != 1]
    segments: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ia) and j < len(oa):
        seg_in, seg_out = [ia[i]], [oa[j]]
        pi, po = ins[ia[i]], outs[oa[j]]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                if i >= len(ia):
                    raise RuleUnsupported("reshape sizes do not factor")
                pi *= ins[ia[i]]
                seg_in.append(ia[i])
                i += 1
            else:
                if j >= len(oa):
                    raise RuleUnsupported("reshape sizes do not factor")
                po *= outs[oa[j]]
                seg_out.append(oa[j])
                j += 1
        segments.append((seg_in, seg_out))
    if i < len(ia) or j < len(oa):
        raise RuleUnsupported("reshape sizes do not factor")
    return segments


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if node.op_type == "Reshape" and const(node.inputs[1]) is None:
        raise RuleUnsupported("Reshape with a shape computed at run time")
    xs, ys = b.shape(x), b.shape(y)
    for seg_in, seg_out in factorize(xs, ys):
        xa = [b.axis(x, k) for k in seg_in]
        ya = [b.axis(y, k) for k in seg_out]
        if len(xa) == 1 and len(ya) == 1:
            b.link(xa[0], ya[0])
        elif len(xa) == 1:
            b.product(xa[0], ya)  # split: [C] -> [heads, head_dim]
        elif len(ya) == 1:
            b.product(ya[0], xa)  # merge: [heads, head_dim] -> [C], flatten
        else:
            for a in xa + ya:
                b.pin(a, f"{node.op_type} regroups axes of sizes {[b.size(a) for a in xa]} -> {[b.size(a) for a in ya]}")
    for k in range(len(ys)):
        b.accept(b.axis(y, k))
    if node.op_type == "Reshape":
        y_axes = [b.axis(y, k) for k in range(len(ys))]

        def crop(graph: ir.Graph, node: ir.Node, kept) -> None:  # noqa: ANN001
            target = const(node.inputs[1]).astype(np.int64).copy()
            for k, entry in enumerate(target):
                if entry > 0:
                    target[k] = len(kept(y_axes[k]))
            replace_const_input(graph, node, 1, target, "crop")

        b.on_crop(crop)


@rule("Concat")
def concat(node: ir.Node, b: CouplingBuilder) -> None:
    y = node.outputs[0]
    rank = len(b.shape(y))
    axis = attr_int(node, "axis", 0) % rank
    offset = 0
    for x in node.inputs:
        n = b.shape(x)[axis]
        for k in range(rank):
            if k == axis:
                b.link_indices(b.axis(x, k), np.arange(n), b.axis(y, k), np.arange(offset, offset + n))
            else:
                b.link(b.axis(x, k), b.axis(y, k))
        offset += n


@rule("Split")
def split(node: ir.Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    rank = len(b.shape(x))
    axis = attr_int(node, "axis", 0) % rank
    offset = 0
    out_axes = []
    for y in node.outputs:
        n = b.shape(y)[axis]
        for k in range(rank):
            if k == axis:
                b.link_indices(b.axis(y, k), np.arange(n), b.axis(x, k), np.arange(offset, offset + n))
            else:
                b.link(b.axis(x, k), b.axis(y, k))
        out_axes.append(b.axis(y, axis))
        offset += n

    def crop(graph: ir.Graph, node: ir.Node, kept) -> None:  # noqa: ANN001
        sizes = np.array([len(kept(a)) for a in out_axes], dtype=np.int64)
        if "split" in node.attributes:
            node.attributes["split"] = ir.AttrInt64s("split", [int(s) for s in sizes])
            return
        node.attributes.pop("num_outputs", None)
        if input_at(node, 1) is None:
            node.resize_inputs(2)
        replace_const_input(graph, node, 1, sizes, "crop")

    b.on_crop(crop)


def _slice_params(node: ir.Node, shape: tuple[int, ...]) -> dict[int, tuple[int, int, int]]:
    """axis -> (start, output length, step) with starts/ends clamped like ONNX does."""
    starts, ends = const(node.inputs[1]), const(node.inputs[2])
    if starts is None or ends is None:  # before any len(): a computed input is None here
        raise RuleUnsupported("Slice with starts/ends computed at run time")
    axes_v, steps_v = input_at(node, 3), input_at(node, 4)
    axes = const(axes_v) if axes_v is not None else np.arange(len(starts))
    steps = const(steps_v) if steps_v is not None else np.ones(len(starts), dtype=np.int64)
    if axes is None or steps is None:
        raise RuleUnsupported("Slice with axes/steps computed at run time")
    out = {}
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = int(a) % len(shape)
        start, stop, step = slice(int(s), int(e), int(st)).indices(shape[a])
        out[a] = (start, len(range(start, stop, step)), step)
    return out


@rule("Slice")
def slice_(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    xs = b.shape(x)
    params = _slice_params(node, xs)
    sliced = {}
    for k in range(len(xs)):
        xa, ya = b.axis(x, k), b.axis(y, k)
        if k not in params:
            b.link(xa, ya)
            continue
        start, length, step = params[k]
        if step != 1:
            b.pin(xa, "Slice with a step")
            b.pin(ya, "Slice with a step")
            continue
        b.link_indices(xa, np.arange(start, start + length), ya, np.arange(length))
        sliced[k] = (xa, ya, start)

    def crop(graph: ir.Graph, node: ir.Node, kept) -> None:  # noqa: ANN001
        starts = const(node.inputs[1]).astype(np.int64).copy()
        ends = const(node.inputs[2]).astype(np.int64).copy()
        axes_v = input_at(node, 3)
        axes = const(axes_v) if axes_v is not None else np.arange(len(starts))
        for i, a in enumerate(axes):
            a = int(a) % len(xs)
            if a in sliced:
                xa, ya, start = sliced[a]
                new_start = int(np.searchsorted(kept(xa), start))
                starts[i], ends[i] = new_start, new_start + len(kept(ya))
        replace_const_input(graph, node, 1, starts, "crop")
        replace_const_input(graph, node, 2, ends, "crop")

    if sliced:
        b.on_crop(crop)


@rule("Gather")
def gather(node: ir.Node, b: CouplingBuilder) -> None:
    data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ds, is_ = b.shape(data), b.shape(indices)
    axis = attr_int(node, "axis", 0) % len(ds)
    for k in range(axis):
        b.link(b.axis(data, k), b.axis(y, k))
    for k in range(axis + 1, len(ds)):
        b.link(b.axis(data, k), b.axis(y, k - 1 + len(is_)))
    idx = const(indices)
    if idx is not None and idx.ndim == 1:
        # A constant permutation or selection of channels (e.g. a channel shuffle).
        n = b.shape(data)[axis]
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        da, ya = b.axis(data, axis), b.axis(y, axis)
        b.link_indices(ya, np.arange(len(idx)), da, idx)

        def crop(graph: ir.Graph, node: ir.Node, kept) -> None:  # noqa: ANN001
            new = np.searchsorted(kept(da), idx[kept(ya)]).astype(np.int64)
            replace_const_input(graph, node, 1, new, "crop")

        b.on_crop(crop)
        return
    for k in range(len(is_)):
        b.link(b.axis(indices, k), b.axis(y, axis + k))


@rule("Expand")
def expand(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    computed = const(node.inputs[1]) is None
    xs, ys = b.shape(x), b.shape(y)
    for j in range(1, len(ys) + 1):
        ya = b.axis(y, len(ys) - j)
        if j <= len(xs) and xs[-j] == ys[-j]:
            b.link(b.axis(x, len(xs) - j), ya)
        elif computed:
            b.pin(ya, "Expand broadcasts to a size computed at run time")
        else:
            b.accept(ya)
            if j <= len(xs):
                b.accept(b.axis(x, len(xs) - j))
    y_axes = [b.axis(y, k) for k in range(len(ys))]
    sizes = list(ys)

    def crop(graph: ir.Graph, node: ir.Node, kept) -> None:  # noqa: ANN001
        changed = [k for k in range(len(ys)) if len(kept(y_axes[k])) != sizes[k]]
        if not changed:
            return
        shape = const(node.inputs[1])
        if shape is not None:
            shape = shape.astype(np.int64).copy()
            for j in range(1, len(shape) + 1):
                if shape[-j] != 1:
                    shape[-j] = len(kept(y_axes[-j]))
            replace_const_input(graph, node, 1, shape, "crop")
            return
        # A computed shape: a cropped axis is never broadcast here (those are pinned), so its
        # entry may be 1 (Expand keeps the input's size): shape * keep + ones.
        keep = np.ones(len(ys), np.int64)
        ones = np.zeros(len(ys), np.int64)
        keep[changed], ones[changed] = 0, 1
        _rewrite_shape(graph, node, keep, ones)

    b.on_crop(crop)


def _rewrite_shape(graph: ir.Graph, node: ir.Node, keep: np.ndarray, ones: np.ndarray) -> None:
    names = []
    for tag, array in (("keep", keep), ("ones", ones)):
        name = f"{node.name or 'expand'}__crop_{tag}"
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.INT64))
        value.const_value = ir.tensor(array, name=name)
        graph.register_initializer(value)
        names.append(value)
    shape = node.inputs[1]
    mul = ir.node("Mul", [shape, names[0]], name=f"{node.name}__crop_mul")
    add = ir.node("Add", [mul.outputs[0], names[1]], name=f"{node.name}__crop_add")
    mul.outputs[0].name, add.outputs[0].name = f"{node.name}__crop_masked", f"{node.name}__crop_shape"
    graph.insert_before(node, [mul, add])
    node.replace_input_with(1, add.outputs[0])


@rule("Tile")
def tile(node: ir.Node, b: CouplingBuilder) -> None:
    repeats = const(node.inputs[1])
    if repeats is None:
        raise RuleUnsupported("Tile with repeats computed at run time")
    x, y = node.inputs[0], node.outputs[0]
    for k, r in enumerate(repeats):
        if r == 1:
            b.link(b.axis(x, k), b.axis(y, k))


@rule("Pad")
def pad(node: ir.Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = len(b.shape(x))
    pads = const(input_at(node, 1)) if input_at(node, 1) is not None else np.array(attr_ints(node, "pads"))
    if pads is None:
        raise RuleUnsupported("Pad with pads computed at run time")
    axes_v = input_at(node, 3)
    axes = list(range(rank)) if axes_v is None else [int(a) % rank for a in const(axes_v)]
    padded = {a for i, a in enumerate(axes) if pads[i] != 0 or pads[i + len(axes)] != 0}
    for k in range(rank):
        if k not in padded:
            b.link(b.axis(x, k), b.axis(y, k))


@rule("Resize", "Upsample")
def resize(node: ir.Node, b: CouplingBuilder) -> None:
    if node.op_type == "Resize" and input_at(node, 3) is not None and b.shape(node.inputs[3]) != (0,):
        raise RuleUnsupported("Resize with explicit output sizes")
    x, y = node.inputs[0], node.outputs[0]
    for k in (0, 1):
        if b.shape(x)[k] == b.shape(y)[k]:
            b.link(b.axis(x, k), b.axis(y, k))


@rule("Shape")
def shape(node: ir.Node, b: CouplingBuilder) -> None:
    # Shape reads sizes at run time: the axes it reads are pinned, the others are free.
    x = node.inputs[0]
    rank = len(b.shape(x))
    start = attr_int(node, "start", 0)
    end = attr_int(node, "end", rank)
    read = set(range(rank)[slice(start, end)])
    for k in range(rank):
        if k in read:
            b.pin(b.axis(x, k), "its size is read at run time by Shape")
        else:
            b.accept(b.axis(x, k))


@rule("Constant")
def constant(node: ir.Node, b: CouplingBuilder) -> None:
    y = node.outputs[0]
    if "value" not in node.attributes:
        raise RuleUnsupported("Constant without a tensor value")
    axes = [b.axis(y, k) for k in range(len(b.shape(y)))]
    b.accept(*axes)

    def crop(graph: ir.Graph, node: ir.Node, kept) -> None:  # noqa: ANN001
        array = node.attributes["value"].as_tensor().numpy()
        for k, a in enumerate(axes):
            array = np.take(array, kept(a), axis=k)
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))

    b.on_crop(crop)

