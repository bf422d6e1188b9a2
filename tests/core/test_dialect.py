"""The com.sparsec verifiers, with a negative test for every check."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.dialect import DOMAIN, verify_node
from sparsec.nm_pattern import nm_mask


def _nm_node(w: np.ndarray | None, **attrs: int) -> ir.Node:
    if w is None:
        weight = ir.Value(name="w")  # not a constant
    else:
        weight = ir.Value(name="w", shape=ir.Shape(w.shape), const_value=ir.tensor(w, name="w"))
    attributes = [ir.AttrInt64(k, v) for k, v in attrs.items()]
    return ir.Node(DOMAIN, "NMSparse", [weight], attributes=attributes, num_outputs=1)


def _pruned(shape=(8, 4), n=2, m=4, axis=0) -> np.ndarray:
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return np.where(nm_mask(np.abs(w), n, m, axis), w, 0).astype(np.float32)


def test_valid_node_passes() -> None:
    assert verify_node(_nm_node(_pruned(), n=2, m=4, axis=0)) == []


@pytest.mark.parametrize(
    ("weight", "attrs", "problem"),
    [
        (np.ones((8, 4), np.float32), {"n": 2, "m": 4, "axis": 0}, "hold more than 2 nonzeros"),
        (_pruned(), {"n": 4, "m": 2, "axis": 0}, "invalid pattern"),
        (_pruned(), {"n": 0, "m": 4, "axis": 0}, "invalid pattern"),
        (_pruned(), {"n": 2, "m": 4, "axis": 5}, "out of range"),
        (_pruned((6, 4), 2, 4, 1), {"n": 2, "m": 4, "axis": 0}, "not a multiple of m=4"),
        (None, {"n": 2, "m": 4, "axis": 0}, "must be a constant"),
        (_pruned(), {"n": 2, "m": 4}, "missing attribute 'axis'"),
        (_pruned(), {"n": 2, "m": 4, "axis": 0, "block": 3}, "unknown attribute 'block'"),
    ],
)
def test_nm_sparse_verifier_rejects(weight, attrs, problem) -> None:
    problems = verify_node(_nm_node(weight, **attrs))
    assert any(problem in p for p in problems), problems


def test_wrong_attribute_type_and_arity() -> None:
    node = _nm_node(_pruned(), n=2, m=4, axis=0)
    node.attributes["n"] = ir.AttrFloat32("n", 2.0)
    assert any("must be INT" in p for p in verify_node(node))
    extra = ir.Node(DOMAIN, "NMSparse", [node.inputs[0], node.inputs[0]],
                    attributes=[ir.AttrInt64("n", 2), ir.AttrInt64("m", 4), ir.AttrInt64("axis", 0)])
    assert any("inputs" in p for p in verify_node(extra))


def test_output_shape_must_match_weight() -> None:
    node = _nm_node(_pruned(), n=2, m=4, axis=0)
    node.outputs[0].shape = ir.Shape([4, 8])
    assert any("differs from weight shape" in p for p in verify_node(node))


def test_unknown_op_in_domain() -> None:
    node = ir.Node(DOMAIN, "Telepathy", [], num_outputs=1)
    assert verify_node(node) == [f"unknown op {DOMAIN}.Telepathy"]
