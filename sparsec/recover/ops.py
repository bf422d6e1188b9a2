"""ONNX ops in torch: the op table `TorchGraph` evaluates a graph with.

Each entry takes the node's attributes (a dict of python values) and its input tensors
(None for an omitted optional input) and returns the output tensors. Semantics follow the
ONNX operator docs for opsets 13-21 (attributes that moved to inputs, e.g. ReduceMean's axes
in opset 18, Split's split in 13, are read from either). Shape computations (Shape, Gather
on shapes, Concat, Reshape targets) run on small int64 tensors, so exports with computed
shapes work in eager mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sparsec.errors import UnsupportedError

Tensor = torch.Tensor
Attrs = dict[str, Any]
OpFn = Callable[[Attrs, list[Tensor | None]], list[Tensor]]

# ONNX TensorProto data type -> torch dtype.
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.int32, 13: torch.int64, 16: torch.bfloat16,
}

OPS: dict[str, OpFn] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(attrs: Attrs, inputs: list[Tensor | None], index: int = 1) -> list[int] | None:
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return None


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda a, x: [fn(x[0])]  # type: ignore[arg-type]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda a, x: [fn(x[0], x[1])]  # type: ignore[arg-type]


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq, "Less": torch.lt,
    "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "MatMul": torch.matmul,
}.items():
    OPS[_name] = _binary(_fn)
for _name, _fn in {
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos,
    "Identity": lambda t: t, "Softplus": F.softplus, "Sign": torch.sign, "IsNaN": torch.isnan, "Round": torch.round,
    "Mish": F.mish,
}.items():
    OPS[_name] = _unary(_fn)


@op("Div")
def _div(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    p, q = x[0], x[1]
    assert p is not None and q is not None
    if not p.is_floating_point() and not q.is_floating_point():
        return [torch.div(p, q, rounding_mode="trunc")]
    return [p / q]


@op("Mod")
def _mod(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [torch.fmod(x[0], x[1]) if a.get("fmod", 0) else torch.remainder(x[0], x[1])]  # type: ignore[arg-type]




def _fold(fn: Callable[[Tensor, Tensor], Tensor], mean: bool = False) -> OpFn:
    def run(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
        ts = [t for t in x if t is not None]
        out = ts[0]
        for t in ts[1:]:
            out = fn(out, t)
        return [out / len(ts) if mean else out]

    return run


OPS["Max"], OPS["Min"], OPS["Sum"], OPS["Mean"] = _fold(torch.maximum), _fold(torch.minimum), _fold(torch.add), _fold(torch.add, True)


@op("Gelu")
def _gelu(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [F.gelu(x[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")]  # type: ignore[arg-type]


@op("LeakyRelu")
def _leaky(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]  # type: ignore[arg-type]


@op("HardSigmoid")
def _hsig(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)]  # type: ignore[operator]


@op("HardSwish")
def _hswish(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [F.hardswish(x[0])]  # type: ignore[arg-type]


@op("Elu")
def _elu(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [F.elu(x[0], a.get("alpha", 1.0))]  # type: ignore[arg-type]


@op("Clip")
def _clip(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    out = x[0]
    if lo is not None:
        out = torch.maximum(out, torch.as_tensor(lo, dtype=out.dtype))  # type: ignore[arg-type]
    if hi is not None:
        out = torch.minimum(out, torch.as_tensor(hi, dtype=out.dtype))  # type: ignore[arg-type]
    return [out]  # type: ignore[list-item]




OPS["Softmax"] = lambda a, x: [torch.softmax(x[0], a.get("axis", -1))]  # type: ignore[arg-type]
OPS["LogSoftmax"] = lambda a, x: [torch.log_softmax(x[0], a.get("axis", -1))]  # type: ignore[arg-type]


@op("Where")
def _where(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [torch.where(x[0], x[1], x[2])]  # type: ignore[arg-type]


@op("Cast")
def _cast(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [x[0].to(DTYPES[a["to"]])]  # type: ignore[union-attr]


@op("CastLike")
def _cast_like(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [x[0].to(x[1].dtype)]  # type: ignore[union-attr]


@op("Shape")
def _shape(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    dims = list(x[0].shape)  # type: ignore[union-attr]
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@op("Size")
def _size(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [torch.tensor(x[0].numel(), dtype=torch.int64)]  # type: ignore[union-attr]


@op("Reshape")
def _reshape(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    data, shape = x[0], _ints(x[1])
    assert data is not None
    if not a.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [data.reshape(shape)]


@op("Flatten")
def _flatten(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    assert t is not None
    axis = a.get("axis", 1) % max(t.dim(), 1) if a.get("axis", 1) != t.dim() else t.dim()
    return [t.reshape(math.prod(t.shape[:axis]), -1)]


@op("Transpose")
def _transpose(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    assert t is not None
    perm = a.get("perm", list(range(t.dim()))[::-1])
    return [t.permute(*perm)]


@op("Unsqueeze")
def _unsqueeze(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    axes = _axes(a, x) or []
    rank = t.dim() + len(axes)  # type: ignore[union-attr]
    for axis in sorted(d % rank for d in axes):
        t = t.unsqueeze(axis)  # type: ignore[union-attr]
    return [t]  # type: ignore[list-item]


@op("Squeeze")
def _squeeze(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    assert t is not None
    axes = _axes(a, x)
    if axes is None:
        return [t.squeeze()]
    return [t.squeeze(tuple(d % t.dim() for d in axes))]


@op("Concat")
def _concat(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    ts = [t for t in x if t is not None]
    return [torch.cat(ts, dim=a["axis"])]




def split(a: Attrs, x: list[Tensor | None], outputs: int) -> list[Tensor]:
    t = x[0]
    assert t is not None
    axis = a.get("axis", 0)
    sizes = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a.get("split", []))
    if not sizes:
        n = a.get("num_outputs", outputs)
        step = -(-t.shape[axis] // n)
        sizes = [min(step, t.shape[axis] - i * step) for i in range(n)]
    return list(torch.split(t, sizes, dim=axis))


@op("Slice")
def _slice(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    assert t is not None
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * t.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax %= t.dim()
        n = t.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[ax] = slice(s, max(s, e), st)
        else:  # negative step: torch slices only forward; take the range, then flip
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            idx = torch.arange(s, e, st)
            flips.append((ax, idx))
    out = t[tuple(index)]
    for ax, idx in flips:
        out = out.index_select(ax, idx)
    return [out]


@op("Gather")
def _gather(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    data, idx = x[0], x[1]
    assert data is not None and idx is not None
    axis = a.get("axis", 0) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx).long()
    if axis == 0 and data.dim() == 2 and data.is_floating_point():
        return [F.embedding(idx, data)]  # the embedding lookup: a sparse-friendly gradient path
    out = data.index_select(axis, idx.reshape(-1))
    return [out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])]


@op("GatherElements")
def _gather_elements(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    data, idx = x[0], x[1]
    assert data is not None and idx is not None
    axis = a.get("axis", 0)
    return [torch.gather(data, axis, torch.where(idx < 0, idx + data.shape[axis], idx).long())]


@op("Expand")
def _expand(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t, shape = x[0], _ints(x[1])
    assert t is not None
    rank = max(t.dim(), len(shape))
    dims = [1] * (rank - len(shape)) + shape
    have = [1] * (rank - t.dim()) + list(t.shape)
    return [t.reshape(have).expand([max(d, h) if d == 1 or h == 1 else d for d, h in zip(dims, have, strict=True)])]


@op("Tile")
def _tile(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [x[0].repeat(*_ints(x[1]))]  # type: ignore[union-attr]


@op("Range")
def _range(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    start, limit, delta = (t.item() for t in x)  # type: ignore[union-attr]
    return [torch.arange(start, limit, delta, dtype=x[0].dtype)]  # type: ignore[union-attr]


@op("ConstantOfShape")
def _const_of_shape(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    value = a.get("value")
    fill = value.reshape(-1)[0] if isinstance(value, Tensor) else torch.tensor(0.0)
    return [torch.full(_ints(x[0]), fill.item(), dtype=fill.dtype)]


@op("Trilu")
def _trilu(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    k = int(x[1].item()) if len(x) > 1 and x[1] is not None else 0
    return [torch.triu(x[0], k) if a.get("upper", 1) else torch.tril(x[0], k)]  # type: ignore[arg-type]


@op("CumSum")
def _cumsum(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t, axis = x[0], int(x[1].item())  # type: ignore[union-attr]
    assert t is not None
    if a.get("reverse", 0):
        t = t.flip(axis)
    out = torch.cumsum(t, axis)
    if a.get("exclusive", 0):
        out = out - t
    return [out.flip(axis) if a.get("reverse", 0) else out]


def _reduce(fn: Callable[..., Tensor]) -> OpFn:
    def run(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
        t = x[0]
        assert t is not None
        axes = _axes(a, x)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [t]
            axes = list(range(t.dim()))
        return [fn(t, tuple(d % t.dim() for d in axes), keep)]

    return run


OPS["ReduceMean"] = _reduce(lambda t, d, k: t.mean(d, keepdim=k))
OPS["ReduceSum"] = _reduce(lambda t, d, k: t.sum(d, keepdim=k))
OPS["ReduceMax"] = _reduce(lambda t, d, k: t.amax(d, keepdim=k))
OPS["ReduceMin"] = _reduce(lambda t, d, k: t.amin(d, keepdim=k))
OPS["ReduceProd"] = _reduce(lambda t, d, k: _prod(t, d, k))
OPS["ReduceL2"] = _reduce(lambda t, d, k: t.pow(2).sum(d, keepdim=k).sqrt())
OPS["ReduceSumSquare"] = _reduce(lambda t, d, k: t.pow(2).sum(d, keepdim=k))


def _prod(t: Tensor, dims: Sequence[int], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        t = t.prod(d, keepdim=keep) if keep else t.prod(d)
    return t


@op("ArgMax")
def _argmax(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [torch.argmax(x[0], a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))]  # type: ignore[arg-type]


@op("Gemm")
def _gemm(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    p, q = x[0], x[1]
    assert p is not None and q is not None
    p = p.T if a.get("transA", 0) else p
    q = q.T if a.get("transB", 0) else q
    out = a.get("alpha", 1.0) * (p @ q)
    if len(x) > 2 and x[2] is not None:
        out = out + a.get("beta", 1.0) * x[2]
    return [out]


@op("LayerNormalization")
def _layer_norm(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t, scale = x[0], x[1]
    assert t is not None and scale is not None
    axis = a.get("axis", -1) % t.dim()
    shape = t.shape[axis:]
    bias = x[2] if len(x) > 2 else None
    return [F.layer_norm(t, shape, scale.expand(shape), None if bias is None else bias.expand(shape), a.get("epsilon", 1e-5))]


@op("BatchNormalization")
def _batch_norm(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t, scale, bias, mean, var = x[:5]
    # Inference semantics: the running statistics are constants of the graph.
    return [F.batch_norm(t, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))]  # type: ignore[arg-type]


@op("InstanceNormalization")
def _instance_norm(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))]  # type: ignore[arg-type]


@op("GroupNormalization")
def _group_norm(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t, scale, bias = x[0], x[1], x[2]
    assert t is not None and scale is not None and bias is not None
    groups = a["num_groups"]
    if scale.numel() == groups:  # opset 18: per-group scale
        scale = scale.repeat_interleave(t.shape[1] // groups)
        bias = bias.repeat_interleave(t.shape[1] // groups)
    return [F.group_norm(t, groups, scale, bias, a.get("epsilon", 1e-5))]


def _conv_padding(a: Attrs, spatial: int, t: Tensor, kernel: Sequence[int]) -> tuple[Tensor, list[int]]:
    """(input padded as ONNX asks, explicit symmetric padding for torch)."""
    pads = list(a.get("pads", [0] * (2 * spatial)))
    auto = a.get("auto_pad", "NOTSET")
    strides = a.get("strides", [1] * spatial)
    dil = a.get("dilations", [1] * spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * spatial)
        for i in range(spatial):
            n = t.shape[2 + i]
            out = -(-n // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - n)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + spatial] = lo, total - lo
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return t, begin
    pad: list[int] = []
    for i in reversed(range(spatial)):
        pad += [begin[i], end[i]]
    return F.pad(t, pad), [0] * spatial


@op("Conv")
def _conv(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t, w = x[0], x[1]
    assert t is not None and w is not None
    spatial = w.dim() - 2
    t, pad = _conv_padding(a, spatial, t, list(w.shape[2:]))
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    bias = x[2] if len(x) > 2 else None
    return [fn(t, w, bias, a.get("strides", [1] * spatial), pad, a.get("dilations", [1] * spatial), a.get("group", 1))]




def _pool_fn(kind: str) -> OpFn:
    def run(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
        t = x[0]
        assert t is not None
        kernel = a["kernel_shape"]
        spatial = len(kernel)
        strides = a.get("strides", [1] * spatial)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            t2, pad = _conv_padding(a, spatial, t, kernel)
            if t2 is not t:  # asymmetric padding: pad with -inf so it never wins
                t2, pad = _conv_padding(a, spatial, t, kernel)
                t2 = _pad_value(a, spatial, t, kernel, float("-inf"))
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
            return [fn(t2, kernel, strides, pad, a.get("dilations", [1] * spatial), ceil)]
        t2, pad = _conv_padding(a, spatial, t, kernel)
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
        include = bool(a.get("count_include_pad", 0))
        return [fn(t2, kernel, strides, pad, ceil, include)]

    return run


def _pad_value(a: Attrs, spatial: int, t: Tensor, kernel: Sequence[int], value: float) -> Tensor:
    pads = list(a.get("pads", [0] * (2 * spatial)))
    pad: list[int] = []
    for i in reversed(range(spatial)):
        pad += [pads[i], pads[i + spatial]]
    return F.pad(t, pad, value=value)


OPS["MaxPool"], OPS["AveragePool"] = _pool_fn("max"), _pool_fn("avg")
OPS["GlobalAveragePool"] = lambda a, x: [x[0].mean(tuple(range(2, x[0].dim())), keepdim=True)]  # type: ignore[union-attr]
OPS["GlobalMaxPool"] = lambda a, x: [x[0].amax(tuple(range(2, x[0].dim())), keepdim=True)]  # type: ignore[union-attr]


@op("Pad")
def _pad(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    assert t is not None
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a.get("pads", []))
    value = float(x[2].item()) if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(t.dim()))
    n = len(axes)
    full = [0] * (2 * t.dim())
    for i, ax in enumerate(axes):
        full[ax % t.dim()], full[ax % t.dim() + t.dim()] = pads[i], pads[i + n]
    pad: list[int] = []
    for i in reversed(range(t.dim())):
        pad += [full[i], full[i + t.dim()]]
    mode = a.get("mode", "constant")
    return [F.pad(t, pad, mode=mode, value=value) if mode == "constant" else F.pad(t, pad, mode=mode)]


@op("Dropout")
def _dropout(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    t = x[0]
    assert t is not None
    return [t, torch.ones_like(t, dtype=torch.bool)]


@op("Einsum")
def _einsum(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    return [torch.einsum(a["equation"], *[t for t in x if t is not None])]


def attribute_value(attr: Any) -> Any:
    """A python value (int, float, str, list, or a torch tensor) of an onnx_ir attribute."""
    import onnx_ir as ir

    kind = attr.type
    if kind == ir.AttributeType.TENSOR:
        return torch.from_numpy(np.array(attr.as_tensor().numpy()))
    if kind == ir.AttributeType.STRING:
        return attr.as_string()
    if kind in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(attr.value)
    if kind in (ir.AttributeType.INT, ir.AttributeType.FLOAT):
        return attr.value
    raise UnsupportedError(f"attribute '{attr.name}' of type {kind.name} is not supported in training")





@op("GatherND")
def _gather_nd(a: Attrs, x: list[Tensor | None]) -> list[Tensor]:
    data, idx = x[0], x[1]
    assert data is not None and idx is not None
    b = a.get("batch_dims", 0)
    k = idx.shape[-1]
    batch = data.shape[:b]
    flat_data = data.reshape(math.prod(batch), *data.shape[b:])
    flat_idx = idx.reshape(math.prod(batch), -1, k).long()
    rows = []
    for i in range(flat_data.shape[0]):
        ix = flat_idx[i]
        ix = torch.where(ix < 0, ix + torch.tensor(flat_data.shape[1 : 1 + k]), ix)
        rows.append(flat_data[i][tuple(ix.T)])
    out = torch.stack(rows)
    return [out.reshape(*idx.shape[:-1], *data.shape[b + k :])]
__all__ = ["DTYPES", "OPS", "attribute_value", "split"]
