"""Cost model: MACs, parameters, weight and activation bytes, predicted latency per layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.ir.shapes import ShapeInfo, infer_concrete_shapes
from sparsec.layers import layer_name, moe_layers, trace_weight
from sparsec.pm.analysis import Analysis
from sparsec.pm.context import PassContext
from sparsec.targets import Target, get_target

COST_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerCost:
    name: str
    op_type: str
    weight: str | None  # initializer name (the state_dict key for captured torch models)
    macs: int  # dense multiply-accumulates
    effective_macs: int  # after sparsity (N:M keeps n/m of them)
    params: int
    weight_bytes: int  # as stored: sparse weights count values plus position metadata
    activation_bytes: int  # non-constant inputs plus outputs
    sparsity: str  # "dense" or "n:m"
    predicted_ms: float


@dataclass(frozen=True)
class CostReport:
    layers: list[LayerCost]
    target: str

    def total(self, field: str) -> float:
        return sum(getattr(layer, field) for layer in self.layers)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "layers": [asdict(layer) for layer in self.layers],
            "totals": {
                f: self.total(f)
                for f in ("macs", "effective_macs", "params", "weight_bytes", "activation_bytes", "predicted_ms")
            },
        }


def _itemsize(dtype_code: int | None) -> int:
    if dtype_code is None or dtype_code == 0:
        return 4
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype_code)).itemsize)


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def node_macs(node: ir.Node, info: ShapeInfo) -> int:
    """Dense MACs of one node, from concrete shapes; 0 when shapes are unknown."""
    out = info.shape(node.outputs[0])
    if out is None:
        return 0
    if node.op_type == "MatMul":
        a = info.shape(node.inputs[0])
        if a is None:
            return 0
        k = a[-1]
        return _numel(out) * k
    if node.op_type == "Gemm":
        a = info.shape(node.inputs[0])
        if a is None:
            return 0
        trans_a = node.attributes.get("transA")
        k = a[0] if trans_a is not None and trans_a.as_int() else a[1]
        return _numel(out) * k
    if node.op_type == "Conv":
        w = info.shape(node.inputs[1])
        if w is None:
            return 0
        return _numel(out) * _numel(w[1:])
    if node.op_type == "ConvTranspose":
        x, w = info.shape(node.inputs[0]), info.shape(node.inputs[1])
        if x is None or w is None:
            return 0
        return _numel(x) * _numel(w[1:])
    return 0


def sparse_weight_bytes(numel: int, itemsize: int, n: int, m: int) -> int:
    """Kept values plus ceil(log2 m) bits of position per kept value."""
    kept = numel * n // m
    return kept * itemsize + math.ceil(kept * math.ceil(math.log2(m)) / 8)


def block_sparse_weight_bytes(numel: int, itemsize: int, density: float, block: tuple[int, ...]) -> int:
    """Kept values plus metadata: a 1-bit mask per weight (unstructured) or a 4-byte index per kept block."""
    kept = math.ceil(numel * density)
    if tuple(block) == (1, 1):
        return kept * itemsize + math.ceil(numel / 8)
    blocks = math.ceil(numel / (block[0] * block[1]) * density)
    return kept * itemsize + 4 * blocks


def layer_cost(node: ir.Node, info: ShapeInfo, target: Target) -> LayerCost:
    macs = node_macs(node, info)
    layer = trace_weight(node)
    params = weight_bytes = act_bytes = 0
    const_ids = set()
    sparsity = "dense"
    effective = macs
    if layer is not None:
        const_ids.add(id(node.inputs[1]))
        tensor = layer.weight.const_value
        numel, itemsize = int(tensor.size), int(tensor.dtype.itemsize)
        params += numel
        if layer.nm is not None:
            n, m = layer.nm
            sparsity = f"{n}:{m}"
            effective = macs * n // m
            weight_bytes += sparse_weight_bytes(numel, itemsize, n, m)
        elif layer.marker is not None and layer.marker.op_type == "Sparse":
            block = tuple(layer.marker.attributes["block"].as_ints())
            density = layer.marker.attributes["density"].as_float()
            sparsity = f"u:{1 - density:.3g}" if block == (1, 1) else f"b{block[0]}x{block[1]}:{1 - density:.3g}"
            effective = round(macs * density)
            weight_bytes += block_sparse_weight_bytes(numel, itemsize, density, block)
        else:
            weight_bytes += numel * itemsize
    for value in node.inputs:
        if value is None or id(value) in const_ids:
            continue
        if value.const_value is not None:
            params += value.const_value.size
            weight_bytes += int(value.const_value.nbytes)
        else:
            act_bytes += _numel(info.shape(value)) * _itemsize(info.dtypes.get(value.name))
    for value in node.outputs:
        act_bytes += _numel(info.shape(value)) * _itemsize(info.dtypes.get(value.name))
    compute_ms = 2 * effective / (target.peak_gflops * 1e9) * 1e3
    memory_ms = (weight_bytes + act_bytes) / (target.dram_gbps * 1e9) * 1e3
    return LayerCost(
        name=layer_name(node),
        op_type=node.op_type,
        weight=layer.weight.name if layer is not None else None,
        macs=macs,
        effective_macs=effective,
        params=params,
        weight_bytes=weight_bytes,
        activation_bytes=act_bytes,
        sparsity=sparsity,
        predicted_ms=max(compute_ms, memory_ms),
    )


def moe_costs(node: ir.Node, info: ShapeInfo, target: Target) -> list[LayerCost]:
    """One cost per expert projection (`<node>/w1`, `/w2`, `/w_up`) of a `com.sparsec.MoE` op:
    MACs of the routed work (tokens x top_k experts), bytes of all stored experts (packed where
    N:M), latency from the experts a call reads (at most tokens x top_k of the E). The router
    and the biases are counted with w1; activations (X in, Y out) with w1 and w2."""
    x = info.shape(node.inputs[0])
    tokens = _numel(x) // x[-1] if x else 0
    top_k = node.attributes["top_k"].as_int()
    act = _numel(x) * _itemsize(info.dtypes.get(node.inputs[0].name)) if x else 0
    costs = []
    for layer in moe_layers(node):
        tensor = layer.weight.const_value
        e, k, c = (int(v) for v in tensor.shape)
        numel, itemsize = int(tensor.size), int(tensor.dtype.itemsize)
        macs = tokens * top_k * k * c
        sparsity, effective, weight_bytes = "dense", macs, numel * itemsize
        if layer.nm is not None:
            n, m = layer.nm
            sparsity, effective, weight_bytes = f"{n}:{m}", macs * n // m, sparse_weight_bytes(numel, itemsize, n, m)
        extra = [node.inputs[i] for i in ((1, 2, 4) if layer.part == "w1" else (6,) if layer.part == "w2" else ())]
        other = sum(int(v.const_value.nbytes) for v in extra if v is not None and v.const_value is not None)
        params = numel + sum(int(v.const_value.size) for v in extra if v is not None and v.const_value is not None)
        acts = act if layer.part in ("w1", "w2") else 0
        read = weight_bytes * min(1.0, tokens * top_k / e) + other + acts
        compute_ms = 2 * effective / (target.peak_gflops * 1e9) * 1e3
        memory_ms = read / (target.dram_gbps * 1e9) * 1e3
        costs.append(LayerCost(layer.name, "MoE", layer.weight.name, macs, effective, params, weight_bytes + other,
                               acts, sparsity, max(compute_ms, memory_ms)))
    return costs


def estimate_costs(model: ir.Model, *, target: str = "cpu", dims: dict[str, int] | None = None) -> CostReport:
    info = infer_concrete_shapes(model, dims or {})
    spec = get_target(target)
    layers = []
    for node in model.graph:
        if node.domain in ("", "ai.onnx") and node.op_type in COST_OPS:
            layers.append(layer_cost(node, info, spec))
        elif node.domain == DOMAIN and node.op_type == "MoE":
            layers.extend(moe_costs(node, info, spec))
    return CostReport(layers, target)


class CostModel(Analysis):
    """Per-layer cost of the model as it stands (sparse layers counted as sparse)."""

    name = "cost-model"

    def compute(self, model: ir.Model, ctx: PassContext) -> CostReport:
        return estimate_costs(model, target=ctx.target, dims=ctx.dims)
