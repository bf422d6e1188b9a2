"""Solving the couplings: channels (connected elements) and groups of interchangeable channels.

A *channel* is a connected component of linked elements: everything that must go together
when one channel is cropped (a conv's output row, its bias and BN entries, the next conv's
input column, ...). Channels touching exactly the same axes are interchangeable and form a
*group*: cropping a group means choosing which of its channels go. Channels of a flat axis
that is a product (a reshape into heads, a grouped conv) are *derived*: they go exactly when
one of their factor channels goes, and are never chosen on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.passes.structural.coupling import CouplingBuilder
from sparsec.targets import Target


@dataclass(frozen=True)
class ParamSlice:
    """Where a group's channels sit in one parameter: `positions[c]` along `axis`."""

    name: str
    axis: int
    size: int


@dataclass
class Group:
    id: int
    name: str
    classes: np.ndarray  # channel labels, in order of first appearance
    axes: tuple[int, ...]  # axis ids every channel touches
    params: list[ParamSlice]  # parameters cropped along an axis by this group (incl. derived)
    multiple: int  # kept counts must be a multiple of this
    pinned: str | None = None
    lossy: str | None = None  # why cropping is not exact even for zero channels

    @property
    def size(self) -> int:
        return len(self.classes)

    @property
    def prunable(self) -> bool:
        return self.pinned is None

    def describe(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "channels": self.size,
            "multiple": self.multiple,
            "params": [f"{p.name}[{p.axis}]" for p in self.params],
            "pinned": self.pinned,
            "lossy": self.lossy,
        }


@dataclass
class ProductMap:
    flat: np.ndarray  # element ids of the flat axis
    factors: list[np.ndarray]  # per factor, its element id for every flat index


@dataclass
class DependencyGraph:
    """The result of the `dependency-groups` analysis."""

    builder: CouplingBuilder
    labels: np.ndarray  # channel label of every element
    elem_axis: np.ndarray  # axis id of every element
    derived: np.ndarray  # bool per channel
    pinned: dict[int, str]  # channel -> reason
    products: list[ProductMap]
    groups: list[Group] = field(default_factory=list)

    @property
    def n_channels(self) -> int:
        return len(self.derived)

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def propagate(self, removed: np.ndarray, *, check: bool = True) -> np.ndarray:
        """Channels removed once derived channels follow their factors (a fixpoint).

        With `check`, raises if the result breaks a product (a derived channel removed while
        none of its factors is), which a plan within prunable groups cannot do.
        """
        removed = removed.copy()
        for _ in range(len(self.products) + 1):
            changed = False
            for p in self.products:
                want = np.zeros(len(p.flat), dtype=bool)
                for f in p.factors:
                    want |= removed[self.labels[f]]
                flat = self.labels[p.flat]
                if np.any(want & ~removed[flat]):
                    removed[flat[want]] = True
                    changed = True
            if not changed:
                break
        for p in self.products if check else ():
            want = np.zeros(len(p.flat), dtype=bool)
            for f in p.factors:
                want |= removed[self.labels[f]]
            if np.any(removed[self.labels[p.flat]] != want):
                raise ValueError("crop plan breaks a reshape/group coupling (inconsistent derived channels)")
        return removed

    def removed_elements(self, removed_channels: np.ndarray) -> np.ndarray:
        return self.propagate(removed_channels)[self.labels]

    def kept_sizes(self, removed_elements: np.ndarray) -> np.ndarray:
        sizes = np.array([a.size for a in self.builder.axes], dtype=np.int64)
        gone = np.bincount(self.elem_axis[removed_elements], minlength=len(sizes))
        return sizes - gone

    def macs(self, kept_sizes: np.ndarray | None = None) -> int:
        if kept_sizes is None:
            kept_sizes = np.array([a.size for a in self.builder.axes], dtype=np.int64)
        return int(sum(math.prod(int(kept_sizes[a]) for a in n.axes) for n in self.builder.mac_nodes))

    def latency_ms(self, kept_sizes: np.ndarray | None, target: Target) -> float:
        """Roofline estimate (as the cost model's): per node max(compute, fp32 bytes moved)."""
        if kept_sizes is None:
            kept_sizes = np.array([a.size for a in self.builder.axes], dtype=np.int64)
        total = 0.0
        for n in self.builder.mac_nodes:
            macs = math.prod(int(kept_sizes[a]) for a in n.axes)
            nbytes = 4 * sum(math.prod(int(kept_sizes[a]) for a in op) for op in n.operands)
            total += max(2 * macs / (target.peak_gflops * 1e9), nbytes / (target.dram_gbps * 1e9)) * 1e3
        return total

    def channels_of(self, groups: list[Group]) -> np.ndarray:
        mask = np.zeros(self.n_channels, dtype=bool)
        for g in groups:
            mask[g.classes] = True
        return mask

    def summary(self) -> dict:
        prunable = self.prunable_groups()
        return {
            "elements": int(len(self.labels)),
            "channels": int(self.n_channels),
            "groups": len(self.groups),
            "prunable_groups": len(prunable),
            "prunable_channels": int(sum(g.size for g in prunable)),
        }


def _product_maps(b: CouplingBuilder) -> list[ProductMap]:
    maps = []
    for p in b.products:
        sizes = [b.size(f) for f in p.factors]
        idx = np.unravel_index(np.arange(b.size(p.flat)), sizes)
        maps.append(ProductMap(b.elements(p.flat), [b.elements(f)[i] for f, i in zip(p.factors, idx, strict=True)]))
    return maps


def _is_param(model_inits: dict[str, ir.Value], name: str | None) -> bool:
    if name is None or name not in model_inits:
        return False
    v = model_inits[name]
    return v.const_value is not None and v.const_value.dtype.is_floating_point()


def solve(b: CouplingBuilder, model: ir.Model, multiple: int) -> DependencyGraph:
    n = b.n_elements
    src, dst = b.edges()
    from scipy.sparse import coo_matrix  # scipy on use: 0.12 s off every CLI start
    from scipy.sparse.csgraph import connected_components

    adj = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    n_ch, labels = connected_components(adj, directed=False)
    sizes = np.array([a.size for a in b.axes], dtype=np.int64)
    elem_axis = np.repeat(np.arange(len(b.axes)), sizes)
    products = _product_maps(b)

    derived = np.zeros(n_ch, dtype=bool)
    for p in products:
        derived[labels[p.flat]] = True

    pinned: dict[int, str] = {}
    pin_axes = list(b.pins)
    if pin_axes:
        # First pinned axis (in pin order) of every pinned channel, in one vectorised pass.
        elems = np.concatenate([b.elements(a) for a in pin_axes])
        owner = np.repeat(np.arange(len(pin_axes)), [b.size(a) for a in pin_axes])
        chans, first = np.unique(labels[elems], return_index=True)
        for c, i in zip(chans.tolist(), owner[first].tolist(), strict=True):
            a = pin_axes[i]
            pinned[c] = f"{b.axes[a].label}: {b.pins[a]}"
    # Two reshapes that factor one channel differently cannot both hold after a crop.
    origin: dict[int, tuple[int, ...]] = {}
    for p in products:
        flat = labels[p.flat]
        facs = np.stack([labels[f] for f in p.factors], axis=1)
        for c, row in zip(flat.tolist(), map(tuple, facs.tolist()), strict=True):
            if origin.setdefault(c, row) != row:
                for f in (*origin[c], *row):
                    pinned.setdefault(f, "factored inconsistently by two reshapes")
    # A pinned derived channel pins its factors (cropping either would remove it).
    for _ in range(len(products) + 1):
        grew = False
        for p in products:
            for i, c in enumerate(labels[p.flat].tolist()):
                if c in pinned:
                    for f in p.factors:
                        fc = int(labels[f[i]])
                        if fc not in pinned:
                            pinned[fc] = f"derived channel pinned ({pinned[c]})"
                            grew = True
        if not grew:
            break

    graph = DependencyGraph(b, labels, elem_axis, derived, pinned, products)
    graph.groups = _make_groups(graph, model, multiple)
    return graph


def _make_groups(graph: DependencyGraph, model: ir.Model, multiple: int) -> list[Group]:
    b, labels, n_axes = graph.builder, graph.labels, len(graph.builder.axes)
    pairs = np.unique(labels.astype(np.int64) * n_axes + graph.elem_axis)
    pair_label, pair_axis = pairs // n_axes, pairs % n_axes
    bounds = np.flatnonzero(np.diff(pair_label)) + 1
    signatures: dict[tuple[int, ...], list[int]] = {}
    axes_of: dict[int, tuple[int, ...]] = {}
    for lab, axes in zip(np.split(pair_label, bounds), np.split(pair_axis, bounds), strict=True):
        c = int(lab[0])
        axes_of[c] = tuple(axes.tolist())
        if not graph.derived[c]:
            signatures.setdefault(axes_of[c], []).append(c)
    inits = model.graph.initializers
    factor_channels = np.zeros(graph.n_channels, dtype=bool)
    for p in graph.products:
        for f in p.factors:
            factor_channels[labels[f]] = True
    groups = []
    for axes, classes in signatures.items():
        chans = np.array(sorted(classes), dtype=np.int64)
        mask = np.zeros(graph.n_channels, dtype=bool)
        mask[chans] = True
        touched_set = set(axes)
        if factor_channels[chans].any():
            # the group and every channel derived from it
            closure = graph.propagate(mask, check=False)
            for c in np.flatnonzero(closure & ~mask).tolist():
                touched_set.update(axes_of[c])
        touched = sorted(touched_set)
        params = [
            ParamSlice(b.axes[a].value, b.axes[a].axis, b.axes[a].size)
            for a in touched
            if _is_param(inits, b.axes[a].value)
        ]
        lossy = next((f"{b.axes[a].label}: {b.norms[a]}" for a in touched if a in b.norms), None)
        mult = multiple if any(_is_param(inits, b.axes[a].value) for a in axes) else 1
        for p in graph.products:
            for f in p.factors:
                if mask[labels[f[0]]] or mask[labels[f[-1]]]:
                    # One channel of a factor is `other` channels of the flat axis.
                    other = len(p.flat) // len(np.unique(f))
                    mult = math.lcm(mult, multiple // math.gcd(multiple, other))
        pinned = next((graph.pinned[c] for c in classes if c in graph.pinned), None)
        if pinned is None and not params:
            pinned = "no parameter is cropped with these channels"
        elif pinned is None and len(chans) <= mult:
            pinned = f"{len(chans)} channels, not more than the multiple {mult}"
        name = _group_name(b, axes, params)
        groups.append(Group(len(groups), name, chans, axes, params, mult, pinned, lossy))
    return groups


def _group_name(b: CouplingBuilder, axes: tuple[int, ...], params: list[ParamSlice]) -> str:
    direct = [b.axes[a] for a in axes if b.axes[a].value is not None]
    own = {(a.value, a.axis) for a in direct}
    for p in params:
        if (p.name, p.axis) in own:
            return f"{p.name}[{p.axis}]"
    virtual = [b.axes[a].label for a in axes if b.axes[a].value is None]
    if virtual:
        return virtual[0]
    if params:  # e.g. attention heads: a factor of the projections' output rows
        return f"{params[0].name}[{params[0].axis}] factor ({b.axes[axes[0]].size})"
    return direct[0].label if direct else f"axes {axes[:3]}"
