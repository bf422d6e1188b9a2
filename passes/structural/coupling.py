"""The element space that coupling rules write into.

Every axis of every value (and every *virtual* axis a rule invents, such as the head axis
of a reshape or the group axis of a grouped convolution) owns a contiguous range of element
ids, one per index. Rules say which elements are the same channel (`link`), which flat axis
is a row-major product of others (`product`), which axes cannot change (`pin`) and which are
normalised over (`norm`: cropping them changes statistics, so it is lossy). Connected
components over the links are then channels; the solver in `groups.py` builds groups.
A rule also registers how to rewrite its node once kept indices are known (`on_crop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.ir.shapes import ShapeInfo

# kept(axis_id) -> sorted kept indices of that axis; the crop calls actions with it.
KeptFn = Callable[[int], np.ndarray]
# Called with the graph being cropped and *its* copy of the node (the analysis may have run
# on another copy of the model), found by position in the graph.
CropAction = Callable[[ir.Graph, ir.Node, KeptFn], None]


@dataclass(frozen=True)
class AxisInfo:
    value: str | None  # None for a virtual axis
    axis: int
    size: int
    base: int  # first element id
    label: str  # for messages: "%value[axis]" or "virtual(...)"


@dataclass(frozen=True)
class Product:
    """`flat` is the row-major product of `factors` (sizes multiply to flat's size)."""

    flat: int
    factors: tuple[int, ...]


@dataclass(frozen=True)
class MacNode:
    """A MAC-bearing node: MACs = product of the kept sizes of `axes`; `operands` are the
    axes of its inputs and output, for the bytes it moves (the roofline latency)."""

    name: str
    axes: tuple[int, ...]
    operands: tuple[tuple[int, ...], ...] = ()


@dataclass
class CouplingBuilder:
    shapes: ShapeInfo
    axes: list[AxisInfo] = field(default_factory=list)
    _ids: dict[tuple[str, int], int] = field(default_factory=dict)
    _src: list[np.ndarray] = field(default_factory=list)
    _dst: list[np.ndarray] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    pins: dict[int, str] = field(default_factory=dict)  # axis id -> first reason
    norms: dict[int, str] = field(default_factory=dict)  # axis id -> why cropping is lossy
    contracted: set[int] = field(default_factory=set)  # axes a weight op reduces over
    mac_nodes: list[MacNode] = field(default_factory=list)
    crop_actions: list[tuple[int, str, CropAction]] = field(default_factory=list)
    node_index: int = -1  # position of the node being traced, set by the driver
    node_op: str = ""
    accepted: set[int] = field(default_factory=set)  # per node, reset by the driver
    n_elements: int = 0

    # -- axes -----------------------------------------------------------------------------
    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        return None if value is None else self.shapes.shape(value)

    def axis(self, value: ir.Value, axis: int) -> int:
        """The axis id of `value`'s axis (negative axes count from the end)."""
        shape = self.shapes.shape(value)
        assert shape is not None, f"no shape for %{value.name}"
        axis = axis % len(shape)
        key = (value.name, axis)
        found = self._ids.get(key)
        if found is None:
            found = self._new_axis(value.name, axis, shape[axis], f"%{value.name}[{axis}]")
            self._ids[key] = found
        return found

    def virtual(self, size: int, label: str) -> int:
        return self._new_axis(None, -1, size, f"virtual({label})")

    def _new_axis(self, value: str | None, axis: int, size: int, label: str) -> int:
        self.axes.append(AxisInfo(value, axis, int(size), self.n_elements, label))
        self.n_elements += int(size)
        return len(self.axes) - 1

    def size(self, axis_id: int) -> int:
        return self.axes[axis_id].size

    def elements(self, axis_id: int) -> np.ndarray:
        a = self.axes[axis_id]
        return np.arange(a.base, a.base + a.size, dtype=np.int64)

    def axis_id(self, value_name: str, axis: int) -> int | None:
        return self._ids.get((value_name, axis))

    # -- couplings ------------------------------------------------------------------------
    def accept(self, *axis_ids: int) -> None:
        self.accepted.update(axis_ids)

    def link(self, a: int, b: int) -> None:
        """Index i of axis a is the same channel as index i of axis b."""
        if self.size(a) != self.size(b):
            raise ValueError(f"link of {self.axes[a].label} and {self.axes[b].label}: sizes differ")
        self.link_indices(a, np.arange(self.size(a)), b, np.arange(self.size(b)))

    def link_indices(self, a: int, ia: np.ndarray, b: int, ib: np.ndarray) -> None:
        """Index ia[k] of axis a is the same channel as index ib[k] of axis b."""
        self.accept(a, b)
        if len(ia):
            self._src.append(self.axes[a].base + np.asarray(ia, dtype=np.int64))
            self._dst.append(self.axes[b].base + np.asarray(ib, dtype=np.int64))

    def product(self, flat: int, factors: list[int]) -> None:
        """Axis `flat` is the row-major product of `factors`; size-1 factors are dropped."""
        self.accept(flat, *factors)
        real = [f for f in factors if self.size(f) > 1]
        if not real:
            return
        if len(real) == 1:
            self.link(flat, real[0])
            return
        self.products.append(Product(flat, tuple(real)))

    def pin(self, axis_id: int, reason: str) -> None:
        self.accept(axis_id)  # a specific reason replaces the generic "not mapped" one
        self.pins.setdefault(axis_id, reason)

    def norm(self, axis_id: int, reason: str) -> None:
        self.norms.setdefault(axis_id, reason)

    def contract(self, *axis_ids: int) -> None:
        self.contracted.update(axis_ids)

    def macs(self, name: str, axes: list[int], operands: list[list[int]] | None = None) -> None:
        self.mac_nodes.append(MacNode(name, tuple(axes), tuple(tuple(o) for o in operands or ())))

    def on_crop(self, action: CropAction) -> None:
        self.crop_actions.append((self.node_index, self.node_op, action))

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._src:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(self._src), np.concatenate(self._dst)
