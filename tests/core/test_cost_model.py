"""Cost model against MACs computed by hand."""

from __future__ import annotations

from sparsec.passes.analysis.cost_model import estimate_costs
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model, seeded

OPSET = '<ir_version: 10, opset_import: ["" : 18]>\n'


def costs(text: str, dims=None, **w):
    return {c.name or c.op_type: c for c in estimate_costs(make_model(OPSET + text, **w), dims=dims).layers}


def test_conv_strided_grouped() -> None:
    c = costs(
        "g (float[1,8,32,32] x) => (float[1,16,16,16] y) { y = Conv <group = 2, strides = [2,2], pads = [1,1,1,1]> (x, w, b) }",
        w=seeded((16, 4, 3, 3)),
        b=seeded((16,)),
    )
    (layer,) = c.values()
    # 16 out channels * 16*16 positions * (8/2 in channels * 3*3 kernel)
    assert layer.macs == 16 * 16 * 16 * 4 * 9
    assert layer.params == 16 * 4 * 9 + 16
    assert layer.weight_bytes == 4 * (16 * 4 * 9 + 16)
    assert layer.activation_bytes == 4 * (8 * 32 * 32 + 16 * 16 * 16)


def test_conv_transpose() -> None:
    (layer,) = costs(
        "g (float[1,8,5,5] x) => (float[1,4,10,10] y) { y = ConvTranspose <strides = [2,2], output_padding = [1,1], pads = [1,1,1,1]> (x, w) }",
        w=seeded((8, 4, 3, 3)),
    ).values()
    assert layer.macs == (8 * 5 * 5) * (4 * 3 * 3)


def test_gemm_and_batched_matmul_with_symbolic_dims() -> None:
    c = costs(
        "g (float[B,S,64] x) => (float[B,S,S] y) {"
        " q = MatMul(x, wq)"
        " kt = Transpose <perm = [0,2,1]> (q)"
        " y = MatMul(q, kt) }",
        dims={"B": 2, "S": 10},
        wq=seeded((64, 32)),
    )
    proj, attn = list(c.values())
    assert proj.macs == 2 * 10 * 32 * 64
    assert attn.macs == 2 * 10 * 10 * 32  # attention scores: activation x activation
    assert attn.params == 0 and attn.weight is None


def test_gemm_trans() -> None:
    (layer,) = costs(
        "g (float[3,20] x) => (float[3,7] y) { y = Gemm <transB = 1> (x, w) }", w=seeded((7, 20))
    ).values()
    assert layer.macs == 3 * 7 * 20


def test_sparse_layers_count_kept_macs_and_packed_bytes(mlp) -> None:
    dense = estimate_costs(mlp, dims={"N": 4})
    PassManager(parse_pipeline("nm-sparsity{n=1 m=4 min_params=0}")).run(mlp, PassContext())
    sparse = estimate_costs(mlp, dims={"N": 4})
    d, s = dense.layers[0], sparse.layers[0]
    assert d.macs == s.macs == 4 * 32 * 16
    assert s.effective_macs == d.macs // 4
    # 1:4 keeps 128 fp32 values plus 2 bits of position each, plus the dense bias.
    assert s.weight_bytes == 128 * 4 + 128 * 2 // 8 + 32 * 4
    assert s.sparsity == "1:4"


def test_conv_macs_survive_the_nm_marker() -> None:
    model = make_model(
        OPSET + "g (float[1,8,6,6] x) => (float[1,16,6,6] y) { y = Conv <pads = [1,1,1,1]> (x, w) }",
        w=seeded((16, 8, 3, 3)),
    )
    before = estimate_costs(model).layers[0]
    PassManager(parse_pipeline("nm-sparsity{min_params=0}")).run(model, PassContext())
    after = estimate_costs(model).layers[0]
    assert after.macs == before.macs == 16 * 36 * 8 * 9
    assert after.effective_macs == before.macs // 2
