"""`lower-moe-kernels`: `com.sparsec.MoE` -> the sparsec kernel op `MoEFFN` (ONNX Runtime).

The kernel takes the op's inputs as they are (same stacked weight layout); activation and
gating become integer attributes. At batch 1 it reads only the selected experts' weights,
for many tokens it groups tokens by expert (kernels/src/moe_kernel.c). MoE ops the kernel
cannot take (non-fp32 input) stay for `legalize-dense`, which lowers them to masked dense ONNX.

Experts N:M-marked by `nm-sparsity` (every projection with one pattern, m in 4/8/16) are
packed per expert with `pack_nm`, the N:M MatMul kernels' format, which also checks that the
pattern holds: the op then gets the packed values in the w1/w2/w_up slots, their metadata as
extra inputs and the pattern as attributes n, m. Otherwise the kernel reads the pruned
weights dense, and the decision says why; dense experts are stored in the kernel's panel
layout (`pack_panels`, attribute panel=32): each expert's [K, C] projection as 32-column
panels [K][32], which the kernel's 12x32 tiles stream contiguously (kernels/src/moe_internal.h).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.moe import (
    ACTIVATION_CODES,
    EXPERT_WEIGHTS,
    GATING_CODES,
    expert_weight,
    moe_dims,
)
from sparsec.ir.file_tensor import store_tensor
from sparsec.ir.rewrite import replace_value
from sparsec.kernels import PackedFormatError, pack_nm
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult
from sparsec.pm.registry import register_pass
from sparsec.runtime import KERNEL_DOMAIN

MOE_OP = "MoEFFN"
KERNEL_GROUP_SIZES = (4, 8, 16)
PANEL = 32  # SK_MOE_NR: columns per weight panel of the dense experts


def pack_panels(w: np.ndarray) -> np.ndarray:
    """Stacked experts [E, K, C] -> the kernel's panel layout, flat: per expert ceil(C / 32)
    panels [K][32] (columns zero-padded to whole panels), experts in order."""
    e, k, c = w.shape
    p = -(-c // PANEL)
    padded = np.zeros((e, k, p * PANEL), np.float32)
    padded[:, :, :c] = w
    return np.ascontiguousarray(padded.reshape(e, k, p, PANEL).transpose(0, 2, 1, 3)).reshape(-1)


def unpack_panels(flat: np.ndarray, e: int, k: int, c: int) -> np.ndarray:
    """The inverse of `pack_panels`: [E, K, C]."""
    p = -(-c // PANEL)
    return np.ascontiguousarray(flat.reshape(e, p, k, PANEL).transpose(0, 2, 1, 3).reshape(e, k, p * PANEL)[:, :, :c])


def experts_pattern(node: ir.Node) -> tuple[int, int] | str | None:
    """(n, m) when every expert projection of `node` is N:M-marked along its reduction axis
    with one pattern the kernel takes; None when none is marked; else why it runs dense."""
    found: dict[str, tuple[int, int] | None] = {}
    for part, index in EXPERT_WEIGHTS.items():
        if index < len(node.inputs) and node.inputs[index] is not None:
            marker = expert_weight(node.inputs[index])[1]
            nm = marker is not None and marker.op_type == "NMSparse" and marker.attributes["axis"].as_int() in (1, -2)
            found[part] = (marker.attributes["n"].as_int(), marker.attributes["m"].as_int()) if nm else None  # type: ignore[union-attr]
    patterns = set(found.values())
    if patterns == {None}:
        return None
    if len(patterns) > 1:
        return "expert projections are not all N:M with one pattern: " + ", ".join(
            f"{part} {'dense' if p is None else f'{p[0]}:{p[1]}'}" for part, p in found.items())
    n, m = patterns.pop()  # type: ignore[misc]
    if m not in KERNEL_GROUP_SIZES:
        return f"the kernel takes m in {KERNEL_GROUP_SIZES}, not {m}"
    return n, m


def pack_experts(w: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacked experts [E, K, C] -> (values, meta): each expert packed by `pack_nm` as a [K, C]
    weight, concatenated in expert order (the layout of kernels/src/moe_internal.h). Raises
    PackedFormatError when an expert is not n:m along K."""
    packs = [pack_nm(w[e], n, m) for e in range(w.shape[0])]
    return np.concatenate([p.values for p in packs]), np.concatenate([p.meta for p in packs])


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=store_tensor(np.ascontiguousarray(array), name))
    value.const_value.name = name
    graph.register_initializer(value)
    return value


def _packed_inputs(node: ir.Node, n: int, m: int) -> tuple[list[ir.Value | None], int] | str:
    """The kernel op's inputs with the experts packed, and the packed bytes; or why not."""
    graph = node.graph
    values: dict[str, ir.Value | None] = {}
    metas: dict[str, ir.Value | None] = {}
    nbytes = 0
    for part, index in EXPERT_WEIGHTS.items():
        weight = expert_weight(node.inputs[index])[0] if index < len(node.inputs) else None
        if weight is None:
            values[part] = metas[part] = None
            continue
        w = weight.const_value.numpy()
        if w.dtype != np.float32:
            return f"{part} is {w.dtype}, the kernel takes float32"
        try:
            vals, meta = pack_experts(w, n, m)
        except PackedFormatError as e:
            return f"cannot pack {part}: {e}"
        nbytes += vals.nbytes + meta.nbytes
        values[part] = _constant(graph, f"{weight.name}.nm_values", vals)
        metas[part] = _constant(graph, f"{weight.name}.nm_meta", meta)
    ins = node.inputs
    inputs = [ins[0], ins[1], ins[2], values["w1"], ins[4], values["w2"], ins[6], values["w_up"],
              metas["w1"], metas["w2"]]
    if metas["w_up"] is not None:
        inputs.append(metas["w_up"])
    return inputs, nbytes


def _panel_inputs(node: ir.Node, gated: bool) -> list[ir.Value | None] | None:
    """The kernel op's inputs with the dense experts in the panel layout; None when an expert
    weight is not a float32 constant (the op then takes them row-major and packs a copy)."""
    inputs: list[ir.Value | None] = [v if i not in EXPERT_WEIGHTS.values() else expert_weight(v)[0]
                                     for i, v in enumerate(node.inputs[:8 if gated else 7])]
    for index in EXPERT_WEIGHTS.values():
        weight = inputs[index] if index < len(inputs) else None
        if weight is None:
            continue
        if weight.const_value is None or weight.const_value.dtype != ir.DataType.FLOAT:
            return None
    for index in EXPERT_WEIGHTS.values():
        weight = inputs[index] if index < len(inputs) else None
        if weight is not None:
            inputs[index] = _constant(node.graph, f"{weight.name}.panels", pack_panels(weight.const_value.numpy()))
    return inputs


@register_pass
@dataclass(frozen=True)
class LowerMoEKernels(Pass):
    name = "lower-moe-kernels"
    summary = "Lower com.sparsec.MoE to the sparsec MoE FFN kernel (ONNX Runtime custom op), N:M-packed where the experts are."
    exact = True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        lowered, packed, kept = 0, 0, {}
        for node in [n for n in model.graph if n.domain == DOMAIN and n.op_type == "MoE"]:
            x = node.inputs[0]
            if x.type is not None and x.type.dtype != ir.DataType.FLOAT:
                kept[node.name] = f"input dtype {x.type.dtype.short_name()} (the kernel takes fp32)"
                continue
            d, e, f = moe_dims(node)
            gated = len(node.inputs) > 7 and node.inputs[7] is not None
            attrs = [ir.AttrInt64("D", d), ir.AttrInt64("E", e), ir.AttrInt64("F", f),
                     ir.AttrInt64("top_k", node.attributes["top_k"].as_int()),
                     ir.AttrInt64("activation", ACTIVATION_CODES[node.attributes["activation"].as_string()]),
                     ir.AttrInt64("gating", GATING_CODES[node.attributes["gating"].as_string()]),
                     ir.AttrInt64("gated", int(gated))]
            pattern = experts_pattern(node)
            found = _packed_inputs(node, *pattern) if isinstance(pattern, tuple) else pattern
            extra: dict[str, object] = {}
            if isinstance(found, tuple):
                inputs, nbytes = found
                attrs += [ir.AttrInt64("n", pattern[0]), ir.AttrInt64("m", pattern[1])]  # type: ignore[index]
                decision = f"kernel {MOE_OP} {pattern[0]}:{pattern[1]}"  # type: ignore[index]
                extra["packed_bytes"] = nbytes
                packed += 1
            else:
                # Dense kernel; marked experts are read through their pruned initializers.
                panels = _panel_inputs(node, gated)
                if panels is not None:
                    inputs = panels
                    attrs.append(ir.AttrInt64("panel", PANEL))
                else:
                    inputs = [v if i not in EXPERT_WEIGHTS.values() else expert_weight(v)[0]
                              for i, v in enumerate(node.inputs[:8 if gated else 7])]
                decision = f"kernel {MOE_OP}"
                if found is not None:
                    extra["reason"] = f"dense experts: {found}"
            kernel = ir.Node(KERNEL_DOMAIN, MOE_OP, inputs, attributes=attrs, name=f"{node.name}/kernel", num_outputs=1)
            model.graph.insert_before(node, kernel)
            replace_value(node.outputs[0], kernel.outputs[0], drop=node)
            lowered += 1
            ctx.record(self.name, node.name, decision=decision, experts=e, top_k=attrs[3].value, **extra)
        if lowered:
            model.opset_imports.setdefault(KERNEL_DOMAIN, 1)
            from onnx_ir.passes.common import RemoveUnusedNodesPass

            RemoveUnusedNodesPass()(model)  # the experts' markers and the dense weights packed away
        return PassResult(changed=bool(lowered), stats={"moe_lowered": lowered, "moe_packed": packed, "moe_kept": kept})


def raise_moe_kernel(model: ir.Model, node: ir.Node) -> ir.Node:
    """The inverse of the lowering (for `inspect` on artifacts): MoEFFN back to com.sparsec.MoE,
    packed experts unpacked (exactly) behind NMSparse markers along their reduction axis, dense
    experts in the panel layout back to row-major."""
    from sparsec.dialect.moe import MOE_ACTIVATIONS, MOE_GATINGS
    from sparsec.errors import InputError
    from sparsec.kernels.packing_nm import PackedNM

    a = {k: v.as_int() for k, v in node.attributes.items()}
    d, e, f, gated = a["D"], a["E"], a["F"], bool(a.get("gated", 0))
    n, m = a.get("n", 0), a.get("m", 0)
    graph, base = model.graph, node.name.removesuffix("/kernel")
    inputs: list[ir.Value | None] = list(node.inputs[:8 if gated else 7])
    if a.get("panel", 0):
        for part, index in EXPERT_WEIGHTS.items():
            packed = inputs[index] if index < len(inputs) else None
            if packed is None:
                continue
            if packed.const_value is None:
                raise InputError(f"kernel op '{node.name}': panel-packed experts must be constant initializers")
            k, cols = (f, d) if part == "w2" else (d, f)
            flat = packed.const_value.numpy().reshape(-1)
            if a["panel"] != PANEL or flat.size != e * -(-cols // PANEL) * PANEL * k:
                raise InputError(f"kernel op '{node.name}': malformed panel-packed {part}")
            # the name the weight had before lowering, so lower -> raise -> lower keeps names
            name = packed.name.removesuffix(".panels") if packed.name else ""
            if not name or name == packed.name or name in graph.initializers:
                name = f"{base}.{part}"
            inputs[index] = _constant(graph, name, unpack_panels(flat, e, k, cols))
    if n:
        metas = {"w1": node.inputs[8], "w2": node.inputs[9], "w_up": node.inputs[10] if gated else None}
        for part, index in EXPERT_WEIGHTS.items():
            packed, meta = inputs[index] if index < len(inputs) else None, metas[part]
            if packed is None or meta is None:
                continue
            if packed.const_value is None or meta.const_value is None:
                raise InputError(f"kernel op '{node.name}': packed experts must be constant initializers")
            k, cols = (f, d) if part == "w2" else (d, f)
            try:
                experts = [PackedNM.from_arrays(n, m, k, cols, vals, words).to_dense() for vals, words in
                           zip(np.split(packed.const_value.numpy(), e), np.split(meta.const_value.numpy(), e), strict=True)]
            except (PackedFormatError, ValueError) as err:
                raise InputError(f"kernel op '{node.name}': malformed packed {part} ({err})") from None
            weight = _constant(graph, f"{base}.{part}", np.stack(experts))
            marker = ir.Node(DOMAIN, "NMSparse", [weight], name=f"{base}/{part}/marker", attributes=[
                ir.AttrInt64("n", n), ir.AttrInt64("m", m), ir.AttrInt64("axis", 1)])
            graph.insert_before(node, marker)
            inputs[index] = marker.outputs[0]
    attrs = [ir.AttrInt64("top_k", a["top_k"]), ir.AttrString("activation", MOE_ACTIVATIONS[a["activation"]]),
             ir.AttrString("gating", MOE_GATINGS[a["gating"]])]
    new = ir.Node(DOMAIN, "MoE", inputs, attributes=attrs, name=base, num_outputs=1)
    graph.insert_before(node, new)
    old = list(node.inputs[3:])
    replace_value(node.outputs[0], new.outputs[0], drop=node)
    for value in old:
        if value is not None and not value.uses() and value.name in graph.initializers and not value.is_graph_output():
            graph.initializers.pop(value.name)
    model.opset_imports.setdefault(DOMAIN, 1)
    return new
