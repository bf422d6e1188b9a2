"""Physically cropping a model (or zeroing the channels a crop would remove)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.passes.structural.groups import DependencyGraph


@dataclass
class CropResult:
    """What was removed: per parameter and axis, the removed indices (original numbering)."""

    params: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    values_changed: int = 0


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        for v in node.outputs:
            if v is not None and v.name:
                values[v.name] = v
    return values


def _kept_fn(dg: DependencyGraph, removed_elem: np.ndarray):  # noqa: ANN202
    cache: dict[int, np.ndarray] = {}

    def kept(axis_id: int) -> np.ndarray:
        if axis_id not in cache:
            a = dg.builder.axes[axis_id]
            cache[axis_id] = np.flatnonzero(~removed_elem[a.base : a.base + a.size])
        return cache[axis_id]

    return kept


def _changed_axes(dg: DependencyGraph, removed_elem: np.ndarray) -> dict[str, list[int]]:
    """value name -> axis ids of that value with removed indices."""
    out: dict[str, list[int]] = {}
    for a in np.unique(dg.elem_axis[removed_elem]).tolist():
        info = dg.builder.axes[a]
        if info.value is not None:
            out.setdefault(info.value, []).append(a)
    return out


def crop_model(model: ir.Model, dg: DependencyGraph, removed_channels: np.ndarray) -> CropResult:
    """Remove the channels (and every channel derived from them) from `model`, in place."""
    removed_elem = dg.removed_elements(removed_channels)
    kept = _kept_fn(dg, removed_elem)
    graph = model.graph
    nodes = list(graph)
    for index, op_type, action in dg.builder.crop_actions:
        if index >= len(nodes) or nodes[index].op_type != op_type:
            raise ValueError("the model changed since the dependency-groups analysis ran")
        action(graph, nodes[index], kept)
    values = _values_by_name(graph)
    result = CropResult()
    for name, axis_ids in _changed_axes(dg, removed_elem).items():
        value = values[name]
        if value.const_value is not None and value.is_initializer():
            array = value.const_value.numpy()
            for a in axis_ids:
                info = dg.builder.axes[a]
                array = np.take(array, kept(a), axis=info.axis)
                result.params[(name, info.axis)] = np.setdiff1d(np.arange(info.size), kept(a))
            value.const_value = ir.tensor(np.ascontiguousarray(array), name=name)
            value.shape = ir.Shape(array.shape)
        elif value.shape is not None:
            dims = list(value.shape)
            for a in axis_ids:
                info = dg.builder.axes[a]
                dims[info.axis] = len(kept(a))
            value.shape = ir.Shape(dims)
        result.values_changed += 1
    return result


def zero_channels(model: ir.Model, dg: DependencyGraph, removed_channels: np.ndarray) -> int:
    """Set every parameter entry of the removed channels to zero (no shape changes).

    A crop of channels that are exactly zero must not change the outputs (unless a group
    is lossy: a norm over channels sees fewer of them); this makes such a model.
    """
    removed_elem = dg.removed_elements(removed_channels)
    kept = _kept_fn(dg, removed_elem)
    zeroed = 0
    inits = model.graph.initializers
    for name, axis_ids in _changed_axes(dg, removed_elem).items():
        value = inits.get(name)
        if value is None or value.const_value is None or not value.const_value.dtype.is_floating_point():
            continue
        array = value.const_value.numpy().copy()
        for a in axis_ids:
            info = dg.builder.axes[a]
            gone = np.setdiff1d(np.arange(info.size), kept(a))
            index = [slice(None)] * array.ndim
            index[info.axis] = gone
            array[tuple(index)] = 0
            zeroed += len(gone)
        value.const_value = ir.tensor(array, name=name)
    return zeroed
