"""Any sparsec IR as a trainable torch module, and its trained weights back into the IR.

`TorchGraph(model)` evaluates the graph node by node with the op table of `ops.py` (its
`com.sparsec` ops lowered to their reference ONNX first), holding the trainable float
initializers as `nn.Parameter`s and everything else as constants. Each parameter is known
by its initializer name, so `write_back` puts trained values into the IR by name (for
models captured from PyTorch that is the `state_dict` key).

Sparsity is kept exactly: every weight behind a `com.sparsec` marker (`NMSparse`, `Sparse`),
and every layer weight with exact zeros (N:M lowered to a dense op), gets a mask of its nonzeros, and the forward pass uses `weight * mask`, so a pruned entry
has no gradient and stays zero, and every N:M group keeps its pattern.

`com.sparsec.MoE` is not lowered but run by its own torch rule (`moe_op.py`), so the router
and the stacked expert weights are parameters under their own names and the written-back
graph keeps its routing (top_k, expert count); each MoE node also yields its router logits
and expert mass under `router_points` for router distillation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from sparsec.dialect import DOMAIN
from sparsec.dialect.reference import lower_to_reference
from sparsec.errors import UnsupportedError
from sparsec.ir.io import inline_copy
from sparsec.recover.moe_op import EXTRA_OUTPUTS, moe
from sparsec.recover.ops import DTYPES, OPS, OpFn, attribute_value, split

MARKERS = ("NMSparse", "Sparse")
# com.sparsec ops with a trainable torch rule (not lowered to reference ONNX): every input but
# the first (the activations) is a parameter.
NATIVE: dict[str, OpFn] = {"MoE": moe}
# (op, input index) through which a float initializer is a trainable parameter: weights and
# biases of layers, norm scales and shifts. Not embedding tables (Gather), running statistics,
# shape constants or attention-mask constants.
_TRAINABLE_USES = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Add", "Sub", "Mul", "LayerNormalization",
                   "GroupNormalization", "InstanceNormalization", "PRelu", "Transpose"}


@dataclass(frozen=True)
class _Step:
    op_type: str
    domain: str
    name: str
    attrs: dict[str, Any]
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]
    free: tuple[str, ...]  # values whose last use is this node


def sparsity_masks(model: ir.Model) -> dict[str, np.ndarray]:
    """Initializer name -> boolean mask of its nonzeros, for every weight behind a marker and
    every layer weight holding exact zeros (a pruned weight a backend lowered to a dense op:
    trained weights have no exact zeros, so this only ever keeps pruned entries pruned)."""
    from sparsec.layers import find_layers

    masks = {}
    for layer in find_layers(model):
        w = layer.weight.const_value
        if w is not None and w.dtype.is_floating_point():
            array = w.numpy()
            if not array.all():
                masks[layer.weight.name] = array != 0
    for node in model.graph:
        if node.domain == DOMAIN and node.op_type in MARKERS and node.inputs and node.inputs[0] is not None:
            w = node.inputs[0]
            if w.is_initializer() and w.const_value is not None:
                masks[w.name] = w.const_value.numpy() != 0
        elif node.domain == DOMAIN and node.op_type == "MoE":  # expert weights pruned before MoE-fication
            for w in (node.inputs[i] for i in (3, 5, 7) if i < len(node.inputs)):
                if w is not None and w.const_value is not None and not (array := w.const_value.numpy()).all():
                    masks[w.name] = array != 0
    return masks


def trainable_names(model: ir.Model) -> list[str]:
    """Float initializers (rank >= 1, more than one element) used only as layer parameters."""
    names = []
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or not tensor.dtype.is_floating_point() or len(tensor.shape) == 0 or tensor.size < 2:
            continue
        uses = value.uses()
        if not uses:
            continue
        ok = True
        for use in uses:
            node, index = use.node, use.idx
            if node.domain == DOMAIN and (node.op_type in MARKERS or (node.op_type in NATIVE and index >= 1)):
                continue
            if node.domain not in ("", "ai.onnx"):
                ok = False
            elif node.op_type == "BatchNormalization":
                ok &= index in (1, 2)
            else:
                ok &= node.op_type in _TRAINABLE_USES
        if ok:
            names.append(name)
    return names


class TorchGraph(nn.Module):
    """The IR `model` as a torch module; `forward(feeds)` returns the graph outputs in order."""

    def __init__(self, model: ir.Model, *, trainable: Sequence[str] | None = None) -> None:
        super().__init__()
        self.masks_np = sparsity_masks(model)
        names = list(trainable) if trainable is not None else trainable_names(model)
        copy = inline_copy(model)
        lower_to_reference(copy, keep=NATIVE)
        graph = copy.graph
        unknown = sorted({n.op_type for n in graph if not _has_rule(n)})
        if unknown:
            raise UnsupportedError(f"training on this graph: no torch rule for op(s) {', '.join(unknown)}")
        self.input_names = [v.name for v in graph.inputs if not v.is_initializer()]
        self.output_names = [v.name for v in graph.outputs]
        self.param_key = {name: f"p{i}" for i, name in enumerate(names)}
        self.params = nn.ParameterDict(
            {key: nn.Parameter(torch.from_numpy(np.array(graph.initializers[name].const_value.numpy(), dtype=np.float32)))
             for name, key in self.param_key.items()}
        )
        for name, key in self.param_key.items():
            if name in self.masks_np:
                self.register_buffer(f"mask_{key}", torch.from_numpy(self.masks_np[name].astype(np.float32)), persistent=False)
        self.constants: dict[str, torch.Tensor] = {
            name: torch.from_numpy(np.array(v.const_value.numpy()))
            for name, v in graph.initializers.items()
            if name not in self.param_key and v.const_value is not None
        }
        self.steps = self._plan(graph)
        # (router logits, expert mass) value names of every MoE node, for router distillation.
        self.router_points = [(s.outputs[1], s.outputs[2]) for s in self.steps if s.domain == DOMAIN and s.op_type == "MoE"]

    def _plan(self, graph: ir.Graph) -> list[_Step]:
        nodes = list(graph)
        last: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for v in node.inputs:
                if v is not None:
                    last[v.name] = i
        keep = set(self.output_names)
        steps = []
        for i, node in enumerate(nodes):
            attrs = {k: attribute_value(a) for k, a in node.attributes.items()}
            inputs = tuple(v.name if v is not None else None for v in node.inputs)
            free = tuple(n for n in dict.fromkeys(x for x in inputs if x is not None) if last.get(n) == i and n not in keep)
            outputs = tuple(v.name for v in node.outputs)
            if node.domain == DOMAIN:  # the native rule's extra outputs, named after its first
                outputs += tuple(outputs[0] + suffix for suffix in EXTRA_OUTPUTS)
            steps.append(_Step(node.op_type, node.domain, node.name or node.op_type, attrs, inputs, outputs, free))
        return steps

    # -- parameters by initializer name ---------------------------------------------------
    def weight(self, name: str) -> torch.Tensor:
        """The value the graph sees for initializer `name` (masked where it is sparse)."""
        key = self.param_key[name]
        p = self.params[key]
        mask = getattr(self, f"mask_{key}", None)
        return p * mask if mask is not None else p

    def named_weights(self) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {name: self.weight(name).detach().cpu().numpy().copy() for name in self.param_key}

    def write_back(self, model: ir.Model) -> list[str]:
        """Put the trained values into `model`'s initializers of the same names; returns them."""
        written = []
        for name, array in self.named_weights().items():
            value = model.graph.initializers.get(name)
            if value is None or value.const_value is None:
                continue
            old = value.const_value.numpy()
            value.const_value = ir.tensor(np.ascontiguousarray(array.astype(old.dtype).reshape(old.shape)), name=name)
            written.append(name)
        return written

    # -- evaluation ------------------------------------------------------------------------
    def forward(self, feeds: Mapping[str, torch.Tensor | np.ndarray], capture: Sequence[str] = ()) -> list[torch.Tensor]:
        outputs, _ = self.run(feeds, capture)
        return outputs

    def run(
        self, feeds: Mapping[str, torch.Tensor | np.ndarray], capture: Sequence[str] = ()
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """(graph outputs, the `capture`d intermediate values by name)."""
        env: dict[str, torch.Tensor] = dict(self.constants)
        for name in self.param_key:
            env[name] = self.weight(name)
        for name in self.input_names:
            x = feeds[name]
            env[name] = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        captured = self._execute(self.steps, env, set(capture))
        return [env[n] for n in self.output_names], captured

    # -- segments (block-wise reconstruction) ------------------------------------------------
    def segment(self, given: Sequence[str], targets: Sequence[str]) -> list[_Step]:
        """The steps that compute `targets` from the `given` values, the graph inputs and the
        initializers, in graph order (a backward slice)."""
        known = set(given) | set(self.input_names) | set(self.constants) | set(self.param_key)
        needed = set(targets) - known
        chosen = []
        for step in reversed(self.steps):
            if needed.intersection(step.outputs):
                chosen.append(step)
                needed.difference_update(step.outputs)
                needed.update(n for n in step.inputs if n is not None and n not in known)
        if needed:
            raise UnsupportedError(f"segment: no step computes {sorted(needed)}")
        return chosen[::-1]

    def segment_params(self, steps: Sequence[_Step]) -> list[str]:
        """Initializer names of the parameters the `steps` read."""
        used = {n for s in steps for n in s.inputs if n is not None}
        return [name for name in self.param_key if name in used]

    def run_segment(
        self, steps: Sequence[_Step], values: Mapping[str, torch.Tensor], feeds: Mapping[str, torch.Tensor | np.ndarray],
        targets: Sequence[str],
    ) -> list[torch.Tensor]:
        """Run a `segment` from the given intermediate `values` (and graph inputs `feeds`)."""
        used = {n for s in steps for n in s.inputs if n is not None}
        env: dict[str, torch.Tensor] = {n: c for n, c in self.constants.items() if n in used}
        for name in self.segment_params(steps):
            env[name] = self.weight(name)
        for name in self.input_names:
            if name in used:
                x = feeds[name]
                env[name] = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        env.update(values)
        captured = self._execute(steps, env, set(targets))
        return [captured[t] if t in captured else env[t] for t in targets]

    def _execute(self, steps: Sequence[_Step], env: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {n: env[n] for n in wanted if n in env}
        for step in steps:
            args = [env[n] if n is not None else None for n in step.inputs]
            if step.op_type == "Constant":
                (key, value), = step.attrs.items()
                out = [_constant_value(key, value)]
            elif step.op_type == "Split":
                out = split(step.attrs, args, len(step.outputs))
            else:
                fn = NATIVE[step.op_type] if step.domain == DOMAIN else OPS[step.op_type]
                try:
                    out = fn(step.attrs, args)
                except (RuntimeError, IndexError, ValueError, TypeError) as e:
                    raise UnsupportedError(f"training: node '{step.name}' ({step.op_type}) failed in torch: {str(e).splitlines()[0]}") from None
            for name, value in zip(step.outputs, out, strict=False):
                if name:
                    env[name] = value
                    if name in wanted:
                        captured[name] = value
            for name in step.free:
                env.pop(name, None)
        return captured


def _has_rule(node: ir.Node) -> bool:
    if node.domain == DOMAIN:
        return node.op_type in NATIVE
    return node.domain in ("", "ai.onnx") and (node.op_type in OPS or node.op_type in ("Constant", "Split"))


def _constant_value(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if key == "value_float":
        return torch.tensor(value, dtype=torch.float32)
    if key == "value_floats":
        return torch.tensor(value, dtype=torch.float32)
    if key in ("value_int", "value_ints"):
        return torch.tensor(value, dtype=torch.int64)
    raise UnsupportedError(f"Constant with attribute '{key}' is not supported in training")


__all__ = ["DTYPES", "TorchGraph", "sparsity_masks", "trainable_names"]
