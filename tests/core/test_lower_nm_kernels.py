"""lower-nm-kernels: N:M layers become kernel custom ops with identical outputs.

These tests run with tuning off (`PassContext(tune=False)`): the rewrite and the fixed
thresholds that decide when nothing was measured. Measured choices: tests/core/test_tune.py.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.metrics import compare
from sparsec.kernels import kernels_available
from sparsec.numerics import evaluate, sample_inputs
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model, seeded

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")

DIMS = {"B": 2, "S": 5}
TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[B,S,64] x) => (float[B,S,32] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  wt = Transpose <perm = [1,0]> (w2)
  z = MatMul(r, wt)
  z2 = Reshape(z, shape2)
  g = Gemm <transB = 1> (z2, w3, b3)
  y = Reshape(g, shape3)
}
"""


def build():
    return make_model(
        TEXT,
        w1=seeded((64, 128), 1),
        w2=seeded((96, 128), 2),
        w3=seeded((32, 96), 3),
        b3=seeded((32,), 4),
        shape2=np.array([-1, 96], np.int64),
        shape3=np.array([2, 5, 32], np.int64),
    )


@pytest.mark.parametrize("pattern", ["2:4", "1:8", "4:8", "3:16"])
def test_lowered_model_matches_the_marked_one(pattern) -> None:
    n, m = map(int, pattern.split(":"))
    model = build()
    PassManager(parse_pipeline(f"nm-sparsity{{n={n} m={m} min_params=0}}")).run(model, PassContext(dims=DIMS, tune=False))
    feeds = sample_inputs(model, dims={"B": 2, "S": 5})
    before = evaluate(model, feeds)
    ctx = PassContext(dims=DIMS, tune=False)
    records = PassManager(parse_pipeline("lower-nm-kernels{min_params=0},legalize-dense")).run(model, ctx)
    assert records[0].stats["layers_lowered"] == 3, records[0].stats
    ops = [node.op_type for node in model.graph]
    assert ops.count("NMSparseMatMul") == 3 and "MatMul" not in ops and "Gemm" not in ops
    assert compare(before, evaluate(model, feeds)).rel_l2 < 1e-5


def test_small_or_unsupported_layers_stay_dense() -> None:
    model = build()
    PassManager(parse_pipeline("nm-sparsity{n=1 m=2 min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    records = PassManager(parse_pipeline("lower-nm-kernels{min_params=0},legalize-dense")).run(model, PassContext(dims=DIMS, tune=False))
    assert records[0].stats["layers_lowered"] == 0
    assert all("m in (4, 8, 16)" in r for r in records[0].stats["kept_dense"].values())
    model = build()
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    records = PassManager(parse_pipeline("lower-nm-kernels,legalize-dense")).run(model, PassContext(dims=DIMS, tune=False))
    assert records[0].stats["layers_lowered"] == 0  # all below the default min_params
    assert not any(n.domain for n in model.graph)


def test_half_density_layers_stay_dense_for_many_rows() -> None:
    rows = {"B": 2, "S": 16}  # 32 rows per call
    for pattern, lowered in (("n=2 m=4", 0), ("n=1 m=8", 3)):
        model = build()
        model.graph.initializers["shape3"].const_value = ir.tensor(np.array([2, 16, 32], np.int64), name="shape3")
        PassManager(parse_pipeline(f"nm-sparsity{{{pattern} min_params=0}}")).run(model, PassContext(dims=rows, tune=False))
        records = PassManager(parse_pipeline("lower-nm-kernels{min_params=0},legalize-dense")).run(
            model, PassContext(dims=rows, tune=False)
        )
        assert records[0].stats["layers_lowered"] == lowered
        if not lowered:
            assert all("rows per call" in r for r in records[0].stats["kept_dense"].values())


def test_half_density_layers_take_the_batch_path_from_min_rows() -> None:
    for batch, lowered in ((4, 3), (3, 0)):  # 64 rows: batch path; 48 rows: dense
        rows = {"B": batch, "S": 16}
        model = build()
        model.graph.initializers["shape3"].const_value = ir.tensor(
            np.array([batch, 16, 32], np.int64), name="shape3"
        )
        PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=rows, tune=False))
        records = PassManager(parse_pipeline("lower-nm-kernels{min_params=0},legalize-dense")).run(
            model, PassContext(dims=rows, tune=False)
        )
        assert records[0].stats["layers_lowered"] == lowered


BIAS_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[B,S,64] x) => (float[B,S,128] y, float[B,S,128] v) {
  h = MatMul(x, w1)
  y = Add(b1, h)
  u = MatMul(x, w2)
  v = Add(u, full)
}
"""


def test_constant_bias_adds_fold_into_the_kernel_op() -> None:
    """With fold_bias (the default), `Add(b, MatMul(x, W))` with a [N] bias becomes one op; a bias that varies along rows
    (here [B,S,N]) keeps its Add. Gemm's C folds too (see build())."""
    model = make_model(
        BIAS_TEXT, w1=seeded((64, 128), 1), w2=seeded((64, 128), 2), b1=seeded((128,), 3),
        full=seeded((2, 5, 128), 4),
    )
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    feeds = sample_inputs(model, dims=DIMS)
    before = evaluate(model, feeds)
    PassManager(parse_pipeline("lower-nm-kernels{min_params=0 fold_bias=true},legalize-dense")).run(
        model, PassContext(dims=DIMS, tune=False)
    )
    kernels = [n for n in model.graph if n.op_type == "NMSparseMatMul"]
    assert len(kernels) == 2
    assert [len(n.inputs) for n in kernels] == [4, 3]
    assert [n.op_type for n in model.graph].count("Add") == 1
    assert [o.name for o in model.graph.outputs] == ["y", "v"]
    assert compare(before, evaluate(model, feeds)).rel_l2 < 1e-5

    model = build()
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    PassManager(parse_pipeline("lower-nm-kernels{min_params=0 fold_bias=true},legalize-dense")).run(
        model, PassContext(dims=DIMS, tune=False)
    )
    assert "Add" not in [n.op_type for n in model.graph]
    model = build()  # on by default; fold_bias=false keeps Gemm's C as an Add
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    PassManager(parse_pipeline("lower-nm-kernels{min_params=0 fold_bias=false},legalize-dense")).run(
        model, PassContext(dims=DIMS, tune=False)
    )
    assert [n.op_type for n in model.graph].count("Add") == 1


def test_a_raised_artifact_with_folded_biases_lowers_again() -> None:
    """`sparsec finetune` raises an artifact's kernel ops back to marked MatMuls (their folded
    bias, `W.nm_bias`, becomes an Add's input) and lowers them again: the new bias value gets a
    free name instead of colliding with the old one, and the outputs stay the same."""
    from sparsec.cli.kernel_view import raise_kernel_ops

    model = make_model(
        BIAS_TEXT, w1=seeded((64, 128), 1), w2=seeded((64, 128), 2), b1=seeded((128,), 3),
        full=seeded((2, 5, 128), 4),
    )
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    feeds = sample_inputs(model, dims=DIMS)
    lower = "lower-nm-kernels{min_params=0 fold_bias=true},legalize-dense"
    PassManager(parse_pipeline(lower)).run(model, PassContext(dims=DIMS, tune=False))
    before = evaluate(model, feeds)
    assert raise_kernel_ops(model) == 2
    assert "w1.nm_bias" in model.graph.initializers  # the raised Add reads it
    PassManager(parse_pipeline(lower)).run(model, PassContext(dims=DIMS, tune=False))
    kernels = [n for n in model.graph if n.op_type == "NMSparseMatMul"]
    assert [len(n.inputs) for n in kernels] == [4, 3]
    assert compare(before, evaluate(model, feeds)).rel_l2 < 1e-6


IDENTITY_BIAS_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[B,S,64] x) => (float[B,S,128] y, float[B,S,128] v) {
  bi = Identity(b1)
  h = MatMul(x, w1)
  y = Add(bi, h)
  c = Constant <value = float[128] {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}>()
  u = MatMul(x, w2)
  v = Add(u, c)
}
"""


def test_biases_behind_identity_or_constant_nodes_fold_too() -> None:
    """The TorchScript exporter routes BERT's biases through Identity nodes (deduplicated
    parameters), others write Constant nodes: both are constants the kernel op can add."""
    model = make_model(IDENTITY_BIAS_TEXT, w1=seeded((64, 128), 1), w2=seeded((64, 128), 2), b1=seeded((128,), 3))
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext(dims=DIMS, tune=False))
    feeds = sample_inputs(model, dims=DIMS)
    before = evaluate(model, feeds)
    PassManager(parse_pipeline("lower-nm-kernels{min_params=0},legalize-dense")).run(model, PassContext(dims=DIMS, tune=False))
    kernels = [n for n in model.graph if n.op_type == "NMSparseMatMul"]
    assert [len(n.inputs) for n in kernels] == [4, 4]
    assert "Add" not in [n.op_type for n in model.graph]
    assert compare(before, evaluate(model, feeds)).rel_l2 < 1e-5
