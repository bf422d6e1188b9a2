"""`lower-conv-kernels`: sparse-marked Conv layers -> the SparseConv kernel op (ONNX Runtime).

Matches `Conv(X, NMSparse|Sparse(W)[, B])` (2-D, group 1, dilation 1, equal strides), folds a
following inference BatchNormalization into the weight and bias (the pattern stays the same:
BN scales whole output channels) and fuses a following Relu or Clip(0, 6). Layers go to the
kernel only where `conv_policy.choose` predicts a gain (`policy=always` lowers every layer the
kernel takes, for tests); the rest stay marked for `legalize-dense`, each with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.backends.ort.conv_ops import CONV_OP, conv_attributes, packed_arrays
from sparsec.backends.ort.conv_policy import (
    ConvSpec,
    choose,
    conv_candidates,
    predict_gain_ms,
    predict_speedup,
)
from sparsec.dialect import DOMAIN
from sparsec.ir.rewrite import replace_value
from sparsec.kernels.packing_conv import pack_conv
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass
from sparsec.runtime import KERNEL_DOMAIN

MARKERS = ("NMSparse", "Sparse")


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    a = node.attributes.get(name)
    return list(a.as_ints()) if a is not None else default


def _std(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


def _only_user(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _match(conv: ir.Node) -> tuple[ir.Node, np.ndarray] | str:
    """(marker, weight) or the reason the Conv does not fit the kernel."""
    if len(conv.inputs) < 2 or conv.inputs[1] is None:
        return "no weight"
    marker = conv.inputs[1].producer()
    if marker is None or marker.domain != DOMAIN or marker.op_type not in MARKERS:
        return "weight is not sparse-marked"
    w = _const(marker.inputs[0])
    if w is None or w.ndim != 4 or w.dtype != np.float32:
        return "weight is not a constant fp32 [Cout, Cin, KH, KW]"
    if len(marker.outputs[0].uses()) != 1:
        return "marked weight has several users"
    group = conv.attributes.get("group")
    if group is not None and group.as_int() != 1:
        return "grouped convolution"
    auto_pad = conv.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", ""):
        return f"auto_pad={auto_pad.as_string()}"
    if any(d != 1 for d in _ints(conv, "dilations", [1, 1])):
        return "dilated convolution"
    strides = _ints(conv, "strides", [1, 1])
    if len(strides) != 2 or strides[0] != strides[1]:
        return f"strides {strides} (the kernel takes equal strides)"
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and _const(conv.inputs[2]) is None:
        return "bias is not a constant"
    return marker, w


def _fold_bn(out: ir.Value, w: np.ndarray, b: np.ndarray) -> tuple[ir.Node | None, np.ndarray, np.ndarray]:
    bn = _only_user(out)
    if not _std(bn, "BatchNormalization") or len(bn.outputs) != 1 or bn.inputs[0] is not out:
        return None, w, b
    params = [_const(v) for v in bn.inputs[1:5]]
    if any(p is None for p in params):
        return None, w, b
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    eps_attr = bn.attributes.get("epsilon")
    eps = eps_attr.as_float() if eps_attr is not None else 1e-5
    s = scale / np.sqrt(var + eps)
    w2 = (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
    b2 = ((b.astype(np.float64) - mean) * s + beta).astype(np.float32)
    return bn, w2, b2


def _activation(out: ir.Value) -> tuple[ir.Node | None, str]:
    user = _only_user(out)
    if _std(user, "Relu"):
        return user, "relu"
    if _std(user, "Clip") and user.inputs[0] is out:
        lo = _const(user.inputs[1]) if len(user.inputs) > 1 else None
        hi = _const(user.inputs[2]) if len(user.inputs) > 2 else None
        if lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0:
            return user, "relu6"
    return None, "none"


@register_pass
@dataclass(frozen=True)
class LowerConvKernels(Pass):
    name = "lower-conv-kernels"
    summary = "Lower sparse-marked Conv layers (+BN, +Relu/Relu6) to the sparsec SparseConv kernel (ONNX Runtime)."
    exact = True

    policy: str = option("auto", "auto: lower where conv_policy predicts a gain; always: every layer the kernel takes")
    min_speedup: float = option(1.15, "auto: the predicted speed-up over dense ORT a layer needs")

    def __post_init__(self) -> None:
        if self.policy not in ("auto", "always"):
            from sparsec.errors import OptionError

            raise OptionError(f"lower-conv-kernels: policy must be auto or always, not {self.policy!r}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from sparsec.ir.shapes import infer_concrete_shapes

        convs = [n for n in model.graph if _std(n, "Conv")]
        if not any(not isinstance(_match(c), str) for c in convs):
            return PassResult(changed=False, stats={"convs_lowered": 0, "convs_kept_dense": {}})
        shapes = infer_concrete_shapes(model, ctx.dims)
        lowered, kept = 0, {}
        for conv in convs:
            found = _match(conv)
            key = conv.name or conv.outputs[0].name
            if isinstance(found, str):
                if found != "weight is not sparse-marked":
                    kept[key] = found
                continue
            marker, w = found
            x_shape = shapes.shape(conv.inputs[0])
            if x_shape is None or len(x_shape) != 4:
                kept[key] = "input shape unknown"
                continue
            _, cin, h, wd = x_shape
            cout, _, kh, kw = w.shape
            stride = _ints(conv, "strides", [1, 1])[0]
            pads = tuple(_ints(conv, "pads", [0, 0, 0, 0]))
            ho, wo = (h + pads[0] + pads[2] - kh) // stride + 1, (wd + pads[1] + pads[3] - kw) // stride + 1
            density = float(np.count_nonzero(w)) / w.size
            spec = ConvSpec(int(cin), int(cout), int(kh), int(kw), int(stride), int(h), int(wd), int(ho), int(wo), density)
            pick = conv_candidates(spec)[1] if self.policy == "always" else choose(spec, self.min_speedup)
            if pick.name == "dense":
                kept[key] = (f"predicted {predict_speedup(spec):.2f}x alone (needs {self.min_speedup}), "
                             f"{predict_gain_ms(spec):.3f} ms gain after NCHWc reorders (needs > 0)")
                continue
            self._rewrite(model, conv, marker, w, stride, pads, int(h), int(wd), pick.params["kc"])
            lowered += 1
            ctx.record(self.name, key, decision=f"kernel {CONV_OP}", density=round(density, 4),
                       predicted_speedup=round(pick.predicted_speedup, 3))
        if lowered:
            model.opset_imports.setdefault(KERNEL_DOMAIN, 1)
            from onnx_ir.passes.common import RemoveUnusedNodesPass

            RemoveUnusedNodesPass()(model)
        return PassResult(changed=bool(lowered), stats={"convs_lowered": lowered, "convs_kept_dense": kept})

    @staticmethod
    def _rewrite(model: ir.Model, conv: ir.Node, marker: ir.Node, w: np.ndarray, stride: int,
                 pads: tuple[int, ...], h: int, wd: int, kc: int) -> None:
        graph = model.graph
        b0 = _const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
        b = np.zeros(w.shape[0], np.float32) if b0 is None else b0.astype(np.float32).reshape(-1)
        out = conv.outputs[0]
        bn, w, b = _fold_bn(out, w, b)
        last = bn.outputs[0] if bn is not None else out
        act_node, act = _activation(last)
        final = act_node.outputs[0] if act_node is not None else last
        packed = pack_conv(w, kc)
        base = conv.name or out.name
        wname = marker.inputs[0].name
        inputs = [conv.inputs[0]]
        for k, arr in [*packed_arrays(packed).items(), ("bias", b)]:
            v = ir.Value(name=f"{wname}.conv_{k}", const_value=ir.tensor(np.ascontiguousarray(arr)))
            v.const_value.name = v.name
            graph.register_initializer(v)
            inputs.append(v)
        attrs = [ir.AttrInt64(k, v) for k, v in conv_attributes(packed, stride, pads, act, True, h, wd).items()]
        node = ir.Node(KERNEL_DOMAIN, CONV_OP, inputs, attributes=attrs, name=f"{base}/sparse_conv", num_outputs=1)
        graph.insert_before(conv, node)
        # Replace the last fused value; the fused nodes then have no users and are removed.
        replace_value(final, node.outputs[0], drop=None)
        for dead in (act_node, bn, conv):
            if dead is not None:
                graph.remove(dead, safe=False)
