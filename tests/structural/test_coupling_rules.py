"""Every coupling rule on a small hand-written graph whose expected groups are written out."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.passes.structural.rules import RULES
from sparsec.passes.structural.rules_shape import factorize
from sparsec.testing import make_model, seeded

from .conftest import (
    analyse,
    assert_zero_equivalence,
    group_with,
    param_set,
    prunable_param_sets,
    remove_first,
)

H = '<ir_version: 10, opset_import: ["" : 18]>'


def test_conv_chain_couples_output_rows_with_next_input_columns() -> None:
    m = make_model(
        H + """
        g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
          a = Conv <pads=[1,1,1,1]> (x, w1, b1)
          r = Relu(a)
          y = Conv (r, w2)
        }""",
        w1=seeded((8, 3, 3, 3), 1), b1=seeded((8,), 2), w2=seeded((4, 8, 1, 1), 3),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[0]", "b1[0]", "w2[1]"})]
    out = group_with(dg, "w2[0]")
    assert out.pinned is not None and "graph output" in out.pinned
    inp = group_with(dg, "w1[1]")
    assert inp.pinned is not None and "graph input" in inp.pinned
    assert group_with(dg, "w1[2]").pinned is not None  # kernel window axes never crop
    assert_zero_equivalence(m, dg, remove_first(dg, group_with(dg, "w1[0]"), 3))


def test_residual_add_couples_both_branches_and_batchnorm_params() -> None:
    m = make_model(
        H + """
        g (float[1,4,6,6] x) => (float[1,2,6,6] y) {
          a = Conv (x, wa)
          an = BatchNormalization (a, s, bb, mu, var)
          c = Conv (x, wb)
          s2 = Add(an, c)
          y = Conv (s2, wc)
        }""",
        wa=seeded((8, 4, 1, 1), 1), wb=seeded((8, 4, 1, 1), 2), wc=seeded((2, 8, 1, 1), 3),
        s=seeded((8,), 4), bb=seeded((8,), 5), mu=seeded((8,), 6), var=np.abs(seeded((8,), 7)) + 1,
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"wa[0]", "wb[0]", "wc[1]", "s[0]", "bb[0]", "mu[0]", "var[0]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, group_with(dg, "wa[0]"), 5))


def test_concat_maps_each_input_to_its_slice_of_the_output() -> None:
    m = make_model(
        H + """
        g (float[1,4,6,6] x) => (float[1,2,6,6] y) {
          a = Conv (x, wa)
          b = Conv (x, wb)
          c = Concat <axis=1> (a, b)
          y = Conv (c, wc)
        }""",
        wa=seeded((6, 4, 1, 1), 1), wb=seeded((10, 4, 1, 1), 2), wc=seeded((2, 16, 1, 1), 3),
    )
    dg = analyse(m)
    # wc[1] is shared: its first 6 columns belong to wa's group, the last 10 to wb's.
    assert prunable_param_sets(dg) == [(6, {"wa[0]", "wc[1]"}), (10, {"wb[0]", "wc[1]"})]
    g = group_with(dg, "wb[0]")
    assert_zero_equivalence(m, dg, remove_first(dg, g, 4))


def test_split_and_slice_map_output_channels_to_input_offsets() -> None:
    m = make_model(
        H + """
        g (float[1,4,6,6] x) => (float[1,2,6,6] y, float[1,2,6,6] z) {
          a = Conv (x, w)
          p, q = Split <axis=1> (a, sizes)
          y = Conv (p, wp)
          s = Slice (q, st, en, ax)
          z = Conv (s, wq)
        }""",
        w=seeded((16, 4, 1, 1), 1), wp=seeded((2, 6, 1, 1), 2), wq=seeded((2, 6, 1, 1), 3),
        sizes=np.array([6, 10], np.int64), st=np.array([2], np.int64), en=np.array([8], np.int64),
        ax=np.array([1], np.int64),
    )
    dg = analyse(m)
    sets = prunable_param_sets(dg)
    assert (6, {"w[0]", "wp[1]"}) in sets  # the first Split output
    assert (6, {"w[0]", "wq[1]"}) in sets  # channels 8..13 of the second part, through the Slice
    # channels 6,7 and 14,15 of `a` reach no consumer: their own group with only w[0]
    assert (4, {"w[0]"}) in sets
    for size, params in sets:
        g = next(g for g in dg.prunable_groups() if g.size == size and param_set(g) == params)
        assert_zero_equivalence(m, dg, remove_first(dg, g, 2))


def test_flatten_into_gemm_is_a_product_of_channels_and_positions() -> None:
    m = make_model(
        H + """
        g (float[1,3,2,2] x) => (float[1,5] y) {
          a = Conv (x, w1)
          f = Reshape (a, shp)
          y = Gemm <transB=1> (f, w2, b2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((5, 32), 2), b2=seeded((5,), 3), shp=np.array([1, 32], np.int64),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[0]", "w2[1]"})]
    g = group_with(dg, "w1[0]")
    assert_zero_equivalence(m, dg, remove_first(dg, g, 3))


def test_flatten_op_into_gemm() -> None:
    m = make_model(
        H + """
        g (float[1,3,2,2] x) => (float[1,5] y) {
          a = Conv (x, w1)
          f = Flatten <axis=1> (a)
          y = Gemm <transB=1> (f, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((5, 32), 2),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[0]", "w2[1]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, group_with(dg, "w1[0]"), 5))


def test_transpose_then_matmul_couples_the_moved_axis() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,4,4,5] y) {
          a = Conv (x, w1)
          t = Transpose <perm=[0,2,3,1]> (a)
          y = MatMul (t, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((8, 5), 2),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[0]", "w2[0]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, group_with(dg, "w1[0]"), 2))


def test_gather_with_constant_indices_permutes_channels() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
          a = Conv (x, w1)
          s = Gather <axis=1> (a, idx)
          y = Conv (s, w2)
        }""",
        w1=seeded((6, 3, 1, 1), 1), w2=seeded((2, 6, 1, 1), 2), idx=np.array([0, 3, 1, 4, 2, 5], np.int64),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(6, {"w1[0]", "w2[1]"})]
    g = group_with(dg, "w1[0]")
    assert_zero_equivalence(m, dg, remove_first(dg, g, 2))


def test_depthwise_conv_keeps_channels_aligned() -> None:
    m = make_model(
        H + """
        g (float[1,3,6,6] x) => (float[1,2,6,6] y) {
          a = Conv (x, w1)
          d = Conv <group=8, pads=[1,1,1,1]> (a, wd, bd)
          y = Conv (d, w3)
        }""",
        w1=seeded((8, 3, 1, 1), 1), wd=seeded((8, 1, 3, 3), 2), bd=seeded((8,), 3), w3=seeded((2, 8, 1, 1), 4),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[0]", "wd[0]", "bd[0]", "w3[1]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, group_with(dg, "w1[0]"), 3))


def test_grouped_conv_crops_whole_groups_or_the_same_index_in_every_group() -> None:
    m = make_model(
        H + """
        g (float[1,3,6,6] x) => (float[1,2,6,6] y) {
          a = Conv (x, w1)
          d = Conv <group=2> (a, wg)
          y = Conv (d, w3)
        }""",
        w1=seeded((8, 3, 1, 1), 1), wg=seeded((6, 4, 1, 1), 2), w3=seeded((2, 6, 1, 1), 3),
    )
    dg = analyse(m)
    by_name = {g.name: g for g in dg.prunable_groups()}
    groups = next(g for n, g in by_name.items() if n.startswith("virtual(groups"))
    assert groups.size == 2 and param_set(groups) == {"w1[0]", "wg[0]", "w3[1]"}
    within_in = group_with(dg, "wg[1]")
    assert within_in.size == 4 and param_set(within_in) == {"w1[0]", "wg[1]"}
    within_out = next(g for n, g in by_name.items() if n.startswith("virtual(outputs per group"))
    assert within_out.size == 3 and param_set(within_out) == {"wg[0]", "w3[1]"}
    # No group contains a conv's channels on their own: w1's rows are derived.
    assert all("w1[0]" not in {f"{dg.builder.axes[a].value}[{dg.builder.axes[a].axis}]" for a in g.axes} for g in dg.groups)
    for g in (groups, within_in, within_out):
        assert_zero_equivalence(m, dg, remove_first(dg, g, 1))


def test_conv_transpose_couples_input_rows_and_output_columns() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,2,8,8] y) {
          a = Conv (x, w1)
          u = ConvTranspose <strides=[2,2], kernel_shape=[2,2]> (a, wt, bt)
          y = Conv (u, w3)
        }""",
        w1=seeded((8, 3, 1, 1), 1), wt=seeded((8, 6, 2, 2), 2), bt=seeded((6,), 3), w3=seeded((2, 6, 1, 1), 4),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(6, {"wt[1]", "bt[0]", "w3[1]"}), (8, {"w1[0]", "wt[0]"})]
    for g in dg.prunable_groups():
        assert_zero_equivalence(m, dg, remove_first(dg, g, 2))


def test_matmul_gemm_bias_and_prelu() -> None:
    m = make_model(
        H + """
        g (float[2,6] x) => (float[2,3] y) {
          a = MatMul (x, w1)
          b = Add (a, b1)
          r = PRelu (b, slope)
          y = Gemm <transB=1> (r, w2)
        }""",
        w1=seeded((6, 10), 1), b1=seeded((10,), 2), slope=seeded((10,), 3), w2=seeded((3, 10), 4),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(10, {"w1[1]", "b1[0]", "slope[0]", "w2[1]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, group_with(dg, "w1[1]"), 4))


def test_layer_norm_over_channels_is_prunable_but_lossy() -> None:
    m = make_model(
        H + """
        g (float[2,6] x) => (float[2,3] y) {
          a = MatMul (x, w1)
          n = LayerNormalization <axis=-1> (a, s, b)
          y = MatMul (n, w2)
        }""",
        w1=seeded((6, 8), 1), s=seeded((8,), 2), b=seeded((8,), 3), w2=seeded((8, 3), 4),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[1]", "s[0]", "b[0]", "w2[0]"})]
    g = group_with(dg, "w1[1]")
    assert g.lossy is not None and "LayerNormalization" in g.lossy


def test_group_norm_splits_into_groups_and_channels_per_group() -> None:
    m = make_model(
        '<ir_version: 10, opset_import: ["" : 21]>'
        + """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
          a = Conv (x, w1)
          n = GroupNormalization <num_groups=2> (a, s, b)
          y = Conv (n, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), s=seeded((8,), 2), b=seeded((8,), 3), w2=seeded((2, 8, 1, 1), 4),
    )
    dg = analyse(m)
    groups = {g.name.split(" of ")[0]: g for g in dg.prunable_groups()}
    assert groups["virtual(groups"].size == 2 and groups["virtual(groups"].lossy is None
    per = groups["virtual(channels per group"]
    assert per.size == 4 and per.lossy is not None
    assert param_set(per) == {"w1[0]", "s[0]", "b[0]", "w2[1]"}
    # Whole groups go exactly (each group is normalised on its own).
    assert_zero_equivalence(m, dg, remove_first(dg, groups["virtual(groups"], 1))


ATTENTION = H + """
g (float[1,4,8] x) => (float[1,4,8] y) {
  q = MatMul (x, wq)
  k = MatMul (x, wk)
  v = MatMul (x, wv)
  qh = Reshape (q, s4)
  kh = Reshape (k, s4)
  vh = Reshape (v, s4)
  qt = Transpose <perm=[0,2,1,3]> (qh)
  kt = Transpose <perm=[0,2,3,1]> (kh)
  vt = Transpose <perm=[0,2,1,3]> (vh)
  sc = MatMul (qt, kt)
  p = Softmax <axis=-1> (sc)
  c = MatMul (p, vt)
  ct = Transpose <perm=[0,2,1,3]> (c)
  cm = Reshape (ct, s3)
  o = MatMul (cm, wo)
  y = Add (o, x)
}"""


def attention_model():  # noqa: ANN201
    return make_model(
        ATTENTION,
        wq=seeded((8, 8), 1), wk=seeded((8, 8), 2), wv=seeded((8, 8), 3), wo=seeded((8, 8), 4),
        s4=np.array([1, 4, 2, 4], np.int64), s3=np.array([1, 4, 8], np.int64),
    )


def test_attention_heads_qk_dim_and_v_dim_are_three_groups() -> None:
    m = attention_model()
    dg = analyse(m)
    sets = prunable_param_sets(dg)
    assert sets == [
        (2, {"wq[1]", "wk[1]", "wv[1]", "wo[0]"}),  # heads
        (4, {"wq[1]", "wk[1]"}),  # query/key dimension within a head
        (4, {"wv[1]", "wo[0]"}),  # value dimension within a head
    ]
    # The residual stream (x -> y) is pinned by the graph input and output.
    assert group_with(dg, "wq[0]").pinned is not None
    for g in dg.prunable_groups():
        assert_zero_equivalence(m, dg, remove_first(dg, g, 1))


def test_crop_rewrites_reshape_targets_per_node() -> None:
    from .conftest import copy

    m = attention_model()
    dg = analyse(m)
    heads = next(g for g in dg.prunable_groups() if g.size == 2)
    c = copy(m)
    from sparsec.passes.structural.cropping import crop_model

    crop_model(c, dg, remove_first(dg, heads, 1))
    targets = {n.outputs[0].name: n.inputs[1].const_value.numpy().tolist() for n in c.graph if n.op_type == "Reshape"}
    assert targets == {"qh": [1, 4, 1, 4], "kh": [1, 4, 1, 4], "vh": [1, 4, 1, 4], "cm": [1, 4, 4]}
    assert c.graph.initializers["wo"].const_value.shape == (4, 8)


def test_unknown_op_pins_its_axes_with_a_reason() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
          a = Conv (x, w1)
          t = Hardmax <axis=2> (a)
          e = Einsum <equation="bchw->bchw"> (t)
          y = Conv (e, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((2, 8, 1, 1), 2),
    )
    dg = analyse(m)
    assert "Einsum" not in RULES
    g = group_with(dg, "w1[0]")
    assert g.pinned is not None and "Einsum" in g.pinned and "no coupling rule" in g.pinned
    assert dg.prunable_groups() == [] or all("w1[0]" not in param_set(x) for x in dg.prunable_groups())


def test_reshape_with_computed_shape_is_pinned() -> None:
    m = make_model(
        H + """
        g (float[1,3,2,2] x) => (float[1,5] y) {
          a = Conv (x, w1)
          s = Shape <end=1> (a)
          shp = Concat <axis=0> (s, minus1)
          f = Reshape (a, shp)
          y = Gemm <transB=1> (f, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((5, 32), 2), minus1=np.array([-1], np.int64),
    )
    dg = analyse(m)
    g = group_with(dg, "w1[0]")
    assert g.pinned is not None and "computed" in g.pinned


def test_softmax_and_reduce_over_channels_mark_groups_lossy() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y, float[1,1,4,4] z) {
          a = Conv (x, w1)
          z = ReduceMean <keepdims=1> (a, axes)
          y = Conv (a, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((2, 8, 1, 1), 2), axes=np.array([1], np.int64),
    )
    dg = analyse(m)
    g = group_with(dg, "w1[0]")
    assert g.prunable and g.lossy is not None and "ReduceMean" in g.lossy


def test_squeeze_excitation_couples_the_scale_to_the_block() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
          a = Conv (x, w1)
          p = GlobalAveragePool (a)
          s1 = Conv (p, f1, c1)
          r = Relu (s1)
          s2 = Conv (r, f2, c2)
          g = Sigmoid (s2)
          m = Mul (a, g)
          y = Conv (m, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), f1=seeded((4, 8, 1, 1), 2), c1=seeded((4,), 3),
        f2=seeded((8, 4, 1, 1), 4), c2=seeded((8,), 5), w2=seeded((2, 8, 1, 1), 6),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [
        (4, {"f1[0]", "c1[0]", "f2[1]"}),
        (8, {"w1[0]", "f1[1]", "f2[0]", "c2[0]", "w2[1]"}),
    ]
    for g in dg.prunable_groups():
        assert_zero_equivalence(m, dg, remove_first(dg, g, 2))


def test_expand_and_reshape_share_kv_heads_across_query_heads() -> None:
    # Grouped-query attention's repeat: k [1,2(kv),4(s),3(d)] -> [1,2,2(rep),4,3] -> [1,4,4,3].
    m = make_model(
        H + """
        g (float[1,4,6] x) => (float[1,4,4,4] y) {
          k = MatMul (x, wk)
          kh = Reshape (k, s1)
          kt = Transpose <perm=[0,2,1,3]> (kh)
          ku = Unsqueeze (kt, ax)
          ke = Expand (ku, es)
          kr = Reshape (ke, s2)
          q = MatMul (x, wq)
          qh = Reshape (q, s3)
          qt = Transpose <perm=[0,2,1,3]> (qh)
          kk = Transpose <perm=[0,1,3,2]> (kr)
          y = MatMul (qt, kk)
        }""",
        wk=seeded((6, 6), 1), wq=seeded((6, 12), 2), s1=np.array([1, 4, 2, 3], np.int64),
        ax=np.array([2], np.int64), es=np.array([1, 2, 2, 4, 3], np.int64),
        s2=np.array([1, 4, 4, 3], np.int64), s3=np.array([1, 4, 4, 3], np.int64),
    )
    dg = analyse(m)
    # The output [1, heads, s, s] pins the query heads, hence kv heads and reps too; the
    # head dimension (shared by q and k, summed over) stays prunable.
    assert prunable_param_sets(dg) == [(3, {"wk[1]", "wq[1]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, dg.prunable_groups()[0], 1))


@pytest.mark.parametrize(
    ("ins", "outs", "expected"),
    [
        ((2, 12), (2, 3, 4), [([0], [0]), ([1], [1, 2])]),
        ((1, 8, 2, 2), (1, 32), [([1, 2, 3], [1])]),
        ((6, 4), (4, 6), [([0, 1], [0, 1])]),
    ],
)
def test_factorize(ins, outs, expected) -> None:  # noqa: ANN001
    assert factorize(ins, outs) == expected


def test_analysis_of_a_thousand_nodes_takes_seconds() -> None:
    import time

    lines, inits = [], {}
    prev = "x"
    for i in range(250):
        inits[f"w{i}"] = seeded((16, 16, 1, 1), i)
        lines += [
            f"c{i} = Conv ({prev}, w{i})",
            f"r{i} = Relu (c{i})",
            f"a{i} = Add (r{i}, {prev})",
            f"n{i} = Identity (a{i})",
        ]
        prev = f"n{i}"
    lines.append(f"y = Identity ({prev})")
    m = make_model(H + "\ng (float[1,16,4,4] x) => (float[1,16,4,4] y) {\n" + "\n".join(lines) + "\n}", **inits)
    assert len(list(m.graph)) == 1001
    start = time.perf_counter()
    dg = analyse(m)
    assert time.perf_counter() - start < 10
    # every conv's output is added to the pinned residual stream, so nothing is prunable
    assert dg.prunable_groups() == []


def test_channel_shuffle_couples_through_reshape_transpose_reshape() -> None:
    m = make_model(
        H + """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
          a = Conv (x, w1)
          r = Reshape (a, s5)
          t = Transpose <perm=[0,2,1,3,4]> (r)
          u = Reshape (t, s4)
          y = Conv (u, w2)
        }""",
        w1=seeded((8, 3, 1, 1), 1), w2=seeded((2, 8, 1, 1), 2),
        s5=np.array([1, 2, 4, 4, 4], np.int64), s4=np.array([1, 8, 4, 4], np.int64),
    )
    dg = analyse(m)
    # Channel c = (g, i) with g in 2 shuffle groups and i in 4; the conv's rows are derived.
    assert prunable_param_sets(dg) == [(2, {"w1[0]", "w2[1]"}), (4, {"w1[0]", "w2[1]"})]
    for g in dg.prunable_groups():
        assert_zero_equivalence(m, dg, remove_first(dg, g, 1))


def test_expand_with_a_computed_shape_crops_through_a_rewritten_shape() -> None:
    # A ViT class token: cls [1,1,C] expanded to [batch,1,C] with batch read at run time.
    m = make_model(
        H + """
        g (float[N,3,6] x) => (float[N,4,2] y) {
          t = MatMul (x, w1)
          s = Shape <end=1> (x)
          shp = Concat <axis=0> (s, tail)
          c = Expand (cls, shp)
          z = Concat <axis=1> (c, t)
          y = MatMul (z, w2)
        }""",
        w1=seeded((6, 8), 1), cls=seeded((1, 1, 8), 2), w2=seeded((8, 2), 3), tail=np.array([1, 8], np.int64),
    )
    dg = analyse(m)
    assert prunable_param_sets(dg) == [(8, {"w1[1]", "cls[2]", "w2[0]"})]
    assert_zero_equivalence(m, dg, remove_first(dg, dg.prunable_groups()[0], 3))
