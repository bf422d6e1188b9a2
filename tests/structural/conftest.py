"""Helpers for the structural tests: analyse a tiny model and read its groups by parameter."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.metrics import compare
from sparsec.ir.io import to_proto
from sparsec.numerics import evaluate, sample_inputs
from sparsec.passes.analysis.dependency_groups import dependency_groups
from sparsec.passes.structural.cropping import crop_model, zero_channels
from sparsec.passes.structural.groups import DependencyGraph, Group


def analyse(model: ir.Model, multiple: int = 1) -> DependencyGraph:
    return dependency_groups(model, multiple=multiple)


def param_set(group: Group) -> set[str]:
    return {f"{p.name}[{p.axis}]" for p in group.params}


def group_with(dg: DependencyGraph, member: str) -> Group:
    """The group whose *own* axes include the parameter axis `member` ("w[0]")."""
    name, axis = member[:-1].split("[")
    for g in dg.groups:
        for a in g.axes:
            info = dg.builder.axes[a]
            if info.value == name and info.axis == int(axis):
                return g
    raise AssertionError(f"no group owns {member}")


def prunable_param_sets(dg: DependencyGraph) -> list[tuple[int, set[str]]]:
    return sorted(((g.size, param_set(g)) for g in dg.prunable_groups()), key=lambda t: (t[0], sorted(t[1])))


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(to_proto(model))


def assert_zero_equivalence(model: ir.Model, dg: DependencyGraph, removed: np.ndarray, dims=None) -> None:  # noqa: ANN001
    """Zeroing the removed channels, then cropping them, leaves the outputs unchanged."""
    zeroed = copy(model)
    zero_channels(zeroed, dg, removed)
    cropped = copy(zeroed)
    crop_model(cropped, dg, removed)
    feeds = sample_inputs(model, dims=dims or {})
    fid = compare(evaluate(zeroed, feeds), evaluate(cropped, feeds))
    assert fid.rel_l2 < 1e-5, fid


def remove_first(dg: DependencyGraph, group: Group, k: int) -> np.ndarray:
    removed = np.zeros(dg.n_channels, dtype=bool)
    removed[group.classes[:k]] = True
    return removed


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
