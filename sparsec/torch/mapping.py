"""Which ONNX initializer holds each `state_dict` entry, for both torch exporters.

Names alone are not enough: the dynamo exporter (with sparsec's clean-up) and the legacy
TorchScript exporter both deduplicate identical constants, so e.g. every all-ones BatchNorm
scale of one width is read from a single initializer named after the first
('bn1.weight'), and 'layer1.0.bn1.weight' names nothing. So each entry is first located by
graph position: the node that its module produced (dynamo: node metadata
`pkg.torch.onnx.name_scopes`; legacy: node names such as '/layer1/layer1.0/bn1/...') and the
input slot its role takes in that op; the name is the fallback. The caller verifies the
values (`apply.py`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

# Input slot of a module attribute in the ONNX op that module exports to.
ROLE_SLOTS: dict[str, dict[str, int]] = {
    "Conv": {"weight": 1, "bias": 2},
    "ConvTranspose": {"weight": 1, "bias": 2},
    "Gemm": {"weight": 1, "bias": 2},
    "BatchNormalization": {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4},
    "LayerNormalization": {"weight": 1, "bias": 2},
    "InstanceNormalization": {"weight": 1, "bias": 2},
    "GroupNormalization": {"weight": 1, "bias": 2},
}
# Ops an initializer may pass through on its way to the consuming op (Linear on 3-D inputs:
# MatMul(x, Transpose(W)); legacy dedup: Identity(W)).
_PASS_THROUGH = ("Identity", "Transpose")
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def module_of(node: ir.Node, modules: set[str]) -> str | None:
    """The module path that produced `node`, or None when it cannot be told."""
    scopes = node.metadata_props.get(_SCOPES_KEY)
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = []
        inside = [n for n in names if n in modules and n]
        return inside[-1] if inside else None
    if node.name and node.name.startswith("/"):  # legacy: '/layer1/layer1.0/conv1/Conv'
        # Each component is a name relative to some ancestor ('downsample.1' under
        # 'layer2.0.downsample' is relative to 'layer2.0'): try the deepest ancestor first.
        path = ""
        for comp in node.name.strip("/").split("/")[:-1]:
            parts = path.split(".") if path else []
            candidates = [".".join(parts[:i] + [comp]) for i in range(len(parts), -1, -1)]
            found = next((c for c in candidates if c in modules), None)
            if found is None:
                return None
            path = found
        return path or None
    return None


def source_initializer(value: ir.Value | None) -> ir.Value | None:
    """The initializer `value` is read from, through Identity/Transpose."""
    while value is not None:
        if value.is_initializer() or (value.const_value is not None and value.producer() is None):
            return value
        producer = value.producer()
        if producer is None or producer.op_type not in _PASS_THROUGH or not producer.inputs:
            return None
        value = producer.inputs[0]
    return None


def map_state_dict(
    model: ir.Model, module: nn.Module, keys: Iterable[str] | None = None, extra_names: Iterable[str] = ()
) -> dict[str, str]:
    """{state_dict key: name of the initializer holding it} for every key that can be placed;
    `extra_names` are tensors known by name only (unpacked kernel weights)."""
    modules = {name for name, _ in module.named_modules() if name}
    positional: dict[str, str] = {}
    for node in model.graph.all_nodes():
        owner = module_of(node, modules)
        if owner is None:
            continue
        slots = dict(ROLE_SLOTS.get(node.op_type, {}))
        if node.op_type == "MatMul":
            slots = {"weight": 1}
        for attr, slot in slots.items():
            if slot < len(node.inputs):
                init = source_initializer(node.inputs[slot])
                if init is not None and init.name:
                    positional.setdefault(f"{owner}.{attr}", init.name)
        if node.op_type == "Add":  # bias of MatMul + Add (Linear on 3-D inputs)
            inits = [source_initializer(v) for v in node.inputs]
            consts = [v for v in inits if v is not None and v.name]
            if len(consts) == 1 and any(v is not None and v.producer() is not None and v.producer().op_type == "MatMul" for v in node.inputs):
                positional.setdefault(f"{owner}.bias", consts[0].name)
    names = set(model.graph.initializers) | set(extra_names)
    wanted = list(keys) if keys is not None else list(module.state_dict().keys())
    out: dict[str, str] = {}
    for key in wanted:
        if key in positional:
            out[key] = positional[key]
        elif key in names:
            out[key] = key
    return out


def match_by_value(model: ir.Model, state: dict[str, torch.Tensor], keys: Iterable[str]) -> dict[str, str]:
    """Last resort for keys neither position nor name placed: an initializer of the same shape
    holding exactly the same values (an untouched tensor; identical duplicates are
    interchangeable, which is why the exporters could merge them)."""
    by_shape: dict[tuple[int, ...], list[ir.Value]] = {}
    for value in model.graph.initializers.values():
        if value.const_value is not None and value.name:
            by_shape.setdefault(tuple(value.const_value.shape), []).append(value)
    out = {}
    for key in keys:
        t = state[key].detach().cpu().numpy()
        for value in by_shape.get(tuple(t.shape), []):
            if np.array_equal(value.const_value.numpy(), t):
                out[key] = value.name
                break
    return out
