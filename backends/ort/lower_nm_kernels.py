"""`lower-nm-kernels`: N:M-marked MatMul/Gemm layers -> sparsec kernel custom ops.

Rewrites `MatMul(X, NMSparse(W))`, `MatMul(X, Transpose(NMSparse(W)))` (torch Linear on 3-D
inputs) and `Gemm(X, NMSparse(W), C)` into `com.sparsec.kernels.NMSparseMatMul(X, values, meta)`,
with W packed offline into kept values and position metadata (+ `Add(C)`; with `fold_bias` a
constant [N] bias, Gemm's C or an `Add` after the MatMul, becomes the op's `bias` input). Layers the
kernels cannot take (other group sizes, tiny weights, unusual Gemm attributes) stay marked
and are lowered dense by `legalize-dense`, each with its reason in the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.backends.ort.sparse_ops import NM_OP
from sparsec.dialect import DOMAIN
from sparsec.ir.file_tensor import store_tensor
from sparsec.kernels import PackedFormatError, pack_nm
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass
from sparsec.runtime import KERNEL_DOMAIN

KERNEL_GROUP_SIZES = (4, 8, 16)


def _attr(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return default if a is None else a.value


def _match(marker: ir.Node) -> tuple[ir.Node, bool, list[ir.Node]] | str:
    """(layer node, whether the stored weight is [N, K], nodes between) or the reason the layer
    does not fit. Reads no weight data: a streamed model's weights are read one at a time."""
    axis = marker.attributes["axis"].as_int()
    rank = len(marker.inputs[0].const_value.shape)
    transposed = False
    if rank != 2:
        return f"weight has rank {rank}, kernels take 2-D weights"
    uses = marker.outputs[0].uses()
    if len(uses) != 1:
        return "marked weight has several users"
    user, index = uses[0]
    between: list[ir.Node] = []
    if user.op_type == "Transpose" and user.domain in ("", "ai.onnx"):
        perm = user.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0]:
            return "weight transpose is not [1, 0]"
        t_uses = user.outputs[0].uses()
        if len(t_uses) != 1:
            return "transposed weight has several users"
        between, (user, index) = [user], t_uses[0]
        transposed, axis = not transposed, 1 - axis
    if index != 1 or user.domain not in ("", "ai.onnx"):
        return "weight is not the right-hand input of a MatMul/Gemm"
    if user.op_type == "Gemm":
        if _attr(user, "transA", 0) or _attr(user, "alpha", 1.0) != 1.0 or _attr(user, "beta", 1.0) != 1.0:
            return "Gemm with transA, alpha or beta != default"
        if _attr(user, "transB", 0):
            transposed, axis = not transposed, 1 - axis
    elif user.op_type != "MatMul":
        return f"weight feeds {user.op_type}, not MatMul/Gemm"
    if axis != 0:
        return "N:M groups do not run along the reduction axis"
    return user, transposed, between


def _drop_marker(model: ir.Model, marker: ir.Node, between: list[ir.Node]) -> None:
    """Remove a lowered layer's marker (and the Transpose between) and, once nothing uses it,
    the pruned weight, so its memory or spilled bytes are freed now, not after the last layer."""
    graph = model.graph
    weight = marker.inputs[0]
    for node in [*reversed(between), marker]:
        if all(not out.uses() and not out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)
    if weight is not None and not weight.uses() and graph.initializers.get(weight.name) is weight and not weight.is_graph_output():
        graph.initializers.pop(weight.name)


def _weight_kn(weight: ir.Value, transposed: bool) -> np.ndarray:
    """The weight as [K, N] (a transposed view where stored [N, K]: the packer reads strided)."""
    w = weight.const_value.numpy()
    return w.T if transposed else w


def _trailing_bias_add(out: ir.Value, cols: int) -> tuple[ir.Value | None, ir.Node | None]:
    """(bias, Add) when the layer's only use is `Add(out, bias)` with a constant bias of N
    values (torch Linear on 3-D inputs exports MatMul + Add), else (None, None)."""
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None, None
    add, index = uses[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None, None
    other = add.inputs[1 - index]
    if _as_bias_vector(other, cols) is None:
        return None, None
    return other, add


def _replayed(variant: str):  # noqa: ANN202 (a sparsec.tune.Choice)
    from sparsec.tune.tuner import Choice

    return Choice(key="replayed", variant=variant, dense_us=None, sparse_us=None, sparse_variant=variant,
                  noise=None, reason="as the artifact was compiled (replayed, not measured again)")


def _free_name(graph: ir.Graph, name: str) -> str:
    """`name`, or `name_1`, `name_2`, ... when an initializer holds it: an artifact raised back
    for fine-tuning keeps its folded bias (`W.nm_bias`) as the Add's input, and lowering it
    again must not register a second value of that name."""
    taken = set(graph.initializers)
    if name not in taken:
        return name
    return next(f"{name}_{i}" for i in range(1, len(taken) + 2) if f"{name}_{i}" not in taken)


def _constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant behind `value`: an initializer, reached through Identity nodes (the
    TorchScript exporter routes deduplicated parameters, BERT's biases among them, through
    Identity), or a Constant node's tensor."""
    for _ in range(8):
        if value is None or value.const_value is not None:
            return value.const_value if value is not None else None
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant" and "value" in node.attributes:
            return node.attributes["value"].as_tensor()
        if node.op_type != "Identity":
            return None
        value = node.inputs[0]
    return None


def _as_bias_vector(bias: ir.Value | None, cols: int) -> np.ndarray | None:
    """The bias as a float32 [N] vector if it is a constant that broadcasts along rows only."""
    tensor = _constant(bias)
    if tensor is None:
        return None
    arr = tensor.numpy()
    if arr.dtype != np.float32 or arr.size != cols or (arr.ndim and arr.shape[-1] != cols):
        return None
    return np.ascontiguousarray(arr.reshape(cols))


@register_pass
@dataclass(frozen=True)
class LowerNMKernels(Pass):
    name = "lower-nm-kernels"
    summary = "Lower N:M-marked MatMul/Gemm layers to sparsec CPU kernels (ONNX Runtime custom ops)."
    exact = True

    min_params: int = option(65536, "tuning off only: keep smaller layers dense (a kernel custom-op call costs a few us beyond its work)")
    max_rows_half: int = option(
        16,
        "tuning off only: for patterns keeping half the weights (2:4, 4:8), lower layers with at most "
        "this many rows per call (the GEMV-like path)",
    )
    min_rows_half_batched: int = option(
        64,
        "tuning off only: ...and layers with at least this many rows per call (the rows-as-lanes batch "
        "path); layers in between stay dense. Chosen on one AVX-512 EPYC with 2 kernel threads "
        "(bench/results/bert_block_session.json, bert_shapes_2threads.json); with tuning on (the "
        "default) each layer shape is timed on the machine at hand instead (sparsec tune)",
    )
    dense: tuple[str, ...] = option(
        (), "globs on layer or weight names to run dense whatever was measured (the compile's never-slower fallback)"
    )

    fold_bias: bool = option(
        True,
        "make a constant [N] bias (Gemm C, or an Add after the MatMul) the op's bias input instead "
        "of an ORT Add; the AVX-512 kernels add it as they store the output (no pass over it)",
    )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from sparsec.layers import matches_any, trace_weight
        from sparsec.tune.advisor import Thresholds, plan_layers

        lowered, skipped = 0, {}
        packed_bytes = dense_bytes = 0
        candidates = []  # (marker, n, m, match) that the kernels can take
        for marker in [n for n in model.graph if n.domain == DOMAIN and n.op_type == "NMSparse"]:
            if any(u.domain == DOMAIN and u.op_type == "MoE" for u, _ in marker.outputs[0].uses()):
                continue  # MoE experts: lower-moe-kernels packs them into its own op
            n, m = marker.attributes["n"].as_int(), marker.attributes["m"].as_int()
            weight = marker.inputs[0]
            found = _match(marker)
            reason = found if isinstance(found, str) else None
            if reason is None and m not in KERNEL_GROUP_SIZES:
                reason = f"kernels take m in {KERNEL_GROUP_SIZES}, not {m}"
            if reason is None and weight.const_value.dtype != ir.DataType.FLOAT:
                reason = "kernels take fp32 weights"
            if reason is None and matches_any((weight.name, found[0].name or ""), self.dense):  # type: ignore[index]
                reason = "kept dense: the compiled model was not faster with it sparse (never-slower fallback)"
            if reason is not None:
                skipped[weight.name] = reason
                continue
            candidates.append((marker, n, m, found))
        # One choice per layer, measured per distinct shape on this machine (or the fixed thresholds).
        if not ctx.tune:
            ctx.logger.info("lower-nm-kernels: tuning is off, lowering by fixed thresholds")
        replayed = {mk.inputs[0].name for mk, *_ in candidates} & ctx.replay.keys()
        choices: dict[str, object] = {w: _replayed(ctx.replay[w]) for w in replayed}
        for n, m in sorted({(n, m) for _, n, m, _ in candidates}):
            layers = [trace_weight(f[0]) for mk, nn, mm, f in candidates
                      if (nn, mm) == (n, m) and mk.inputs[0].name not in choices]
            layers = [lay for lay in layers if lay is not None]
            if ctx.tune:
                choices.update(plan_layers(model, layers, n, m, ctx))
            else:
                rules = Thresholds(self.min_params, self.max_rows_half, self.min_rows_half_batched)
                choices.update({k: v if isinstance(v, str) else rules.choose_shape(v)
                                for k, v in _shapes_only(model, layers, n, m, ctx).items()})
        while candidates:  # popped: a lowered layer's pruned weight is dropped as soon as it is packed
            marker, n, m, found = candidates.pop(0)
            weight = marker.inputs[0]
            choice = choices.get(weight.name, "no lowering choice for this layer")
            layer, transposed, _ = found
            name = layer.name or layer.outputs[0].name
            if isinstance(choice, str) or not choice.sparse:
                reason = choice if isinstance(choice, str) else choice.reason
                skipped[weight.name] = reason  # stays marked: legalize-dense stores it dense
                continue
            w_kn = _weight_kn(weight, transposed)
            try:
                packed = pack_nm(w_kn, n, m)
            except (PackedFormatError, ValueError) as e:
                skipped[weight.name] = f"cannot pack: {e}"
                continue
            from sparsec.tune.variants import variants_for

            chosen = variants_for("matmul").get(choice.variant)
            self._rewrite(model, layer, weight, packed, n, m, self.fold_bias, chosen.attrs if chosen else ())
            _drop_marker(model, marker, found[2])
            lowered += 1
            packed_bytes += int(packed.nbytes)
            dense_bytes += int(w_kn.nbytes)
            ctx.record(self.name, name, weight=weight.name, decision=f"kernel {NM_OP} {n}:{m} ({choice.variant})",
                       packed_bytes=int(packed.nbytes), reason=choice.reason, **_times(choice.to_dict()))
            del w_kn, packed  # streamed models: one layer's weight in memory at a time
        if lowered:
            model.opset_imports.setdefault(KERNEL_DOMAIN, 1)
            from onnx_ir.passes.common import RemoveUnusedNodesPass

            RemoveUnusedNodesPass()(model)
        stats = {"layers_lowered": lowered, "layers_kept_dense": len(skipped),
                 "packed_weight_bytes": packed_bytes, "dense_weight_bytes": dense_bytes,
                 "kept_dense": skipped, "choices": "measured" if ctx.tune else "fixed thresholds (tuning off)"}
        return PassResult(changed=bool(lowered), stats=stats)

    @staticmethod
    def _rewrite(model: ir.Model, layer: ir.Node, weight: ir.Value, packed, n: int, m: int,
                 fold_bias: bool, extra: tuple[tuple[str, int], ...] = ()) -> None:
        graph = model.graph
        values = ir.Value(name=f"{weight.name}.nm_values", const_value=store_tensor(np.asarray(packed.values), f"{weight.name}.nm_values"))
        meta = ir.Value(name=f"{weight.name}.nm_meta", const_value=store_tensor(np.asarray(packed.meta), f"{weight.name}.nm_meta"))
        values.const_value.name, meta.const_value.name = values.name, meta.name
        graph.register_initializer(values)
        graph.register_initializer(meta)
        out = layer.outputs[0]
        attrs = [ir.AttrInt64("n", n), ir.AttrInt64("m", m), ir.AttrInt64("K", int(packed.k)),
                 ir.AttrInt64("N", int(packed.cols)), *(ir.AttrInt64(k, v) for k, v in extra)]
        base = layer.name or out.name
        inputs = [layer.inputs[0], values, meta]
        bias = layer.inputs[2] if layer.op_type == "Gemm" and len(layer.inputs) > 2 else None
        bias_add = None
        if bias is None and fold_bias:
            bias, bias_add = _trailing_bias_add(out, int(packed.cols))
        folded = _as_bias_vector(bias, int(packed.cols)) if fold_bias else None
        if folded is not None:  # the op adds it: one ORT Add fewer per layer
            b = ir.Value(name=_free_name(graph, f"{weight.name}.nm_bias"), const_value=ir.tensor(folded))
            b.const_value.name = b.name
            graph.register_initializer(b)
            inputs.append(b)
            attrs.append(ir.AttrInt64("has_bias", 1))
            if bias_add is not None:  # the op's output replaces the Add's
                out = bias_add.outputs[0]
            bias = None
        mm = ir.Node(KERNEL_DOMAIN, NM_OP, inputs, attributes=attrs,
                     name=f"{base}/nm_kernel", num_outputs=1)
        graph.insert_before(layer, mm)
        result = mm.outputs[0]
        if bias is not None:  # a Gemm C the op does not take
            add = ir.Node("", "Add", [result, bias], name=f"{base}/bias", num_outputs=1)
            graph.insert_before(layer, add)
            result = add.outputs[0]
        result.shape, result.type = out.shape, out.type
        name = out.name
        out.replace_all_uses_with(result, replace_graph_outputs=True)
        if out is not layer.outputs[0]:  # the folded Add goes first: it used the layer's output
            graph.remove(out.producer(), safe=True)
        graph.remove(layer, safe=True)
        result.name = name


def _times(choice: dict) -> dict:
    """The measured per-call times of a choice, for the layer's decision record."""
    keys = ("dense_us", "sparse_us", "sparse_variant", "noise")
    return {k: choice[k] for k in keys if choice.get(k) is not None}


def _shapes_only(model: ir.Model, layers: list, n: int, m: int, ctx: PassContext) -> dict:
    from sparsec.ir.shapes import infer_concrete_shapes
    from sparsec.tune.advisor import layer_shape

    shapes = infer_concrete_shapes(model, ctx.dims)
    return {lay.weight.name: layer_shape(lay, shapes, n, m, ctx.threads) for lay in layers}
