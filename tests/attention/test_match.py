"""The attention matcher and the sparse-attention pass on real exports of six families."""

from __future__ import annotations

import pytest

from sparsec.dialect import DOMAIN
from sparsec.errors import OptionError, PipelineError
from sparsec.ir.io import load_model
from sparsec.ir.shapes import infer_concrete_shapes
from sparsec.passes.attention.layout_spec import parse_layout
from sparsec.passes.attention.match import find_attention
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model, seeded

EXPORTS = [(f, e) for f in ("bert", "gpt2", "llama", "t5", "vit", "whisper") for e in ("legacy", "dynamo")]
CAUSAL = {"gpt2", "llama"}


@pytest.mark.parametrize(("family", "exporter"), EXPORTS)
def test_every_block_found_and_rewritten(hf_export, family, exporter) -> None:
    model = load_model(hf_export(family, exporter))
    matches, misses = find_attention(model, infer_concrete_shapes(model, {}))
    assert len(matches) == 2 and misses == [], [m.reason for m in misses]  # two layers each
    if family == "llama":
        assert all(m.kv_heads == 2 and m.heads == 4 for m in matches)  # GQA kept grouped
    # The dense layout must keep the outputs (the pass manager checks numerics after the pass).
    records = PassManager(parse_pipeline("sparse-attention{layout=dense block=4}")).run(model, PassContext())
    rec = records[0]
    assert rec.stats["attention_blocks"] == 2
    assert rec.fidelity.rel_l2 < 1e-4, rec.fidelity
    ops = [n for n in model.graph if n.domain == DOMAIN]
    assert len(ops) == 2 and all(n.op_type == "SparseAttention" for n in ops)
    assert not any(n.op_type == "Softmax" for n in model.graph)
    assert all(b["causal"] == (family in CAUSAL) for b in rec.stats["rewritten"])


@pytest.mark.parametrize(("family", "exporter"), [("gpt2", "legacy"), ("llama", "dynamo"), ("vit", "legacy")])
def test_sparse_layout_reports_fidelity(hf_export, family, exporter) -> None:
    model = load_model(hf_export(family, exporter))
    records = PassManager(parse_pipeline("sparse-attention{layout='local:4,sinks:4' block=4}")).run(model, PassContext())
    rec = records[0]
    densities = [b["density"] for b in rec.stats["rewritten"]]
    assert all(d < 1.0 for d in densities), densities
    assert 0.9 < rec.fidelity.worst_cosine < 1.0  # lossy, and measured


HEAD_TEXT = """
<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
g (float[2,16] x, float[1,4,8] q) => (float[2,4] y, float[1,4,8] z) {
  h = MatMul(x, w)
  y = Softmax <axis = -1> (h)
  z = com.microsoft.MultiHeadAttention <num_heads = 2> (q, q, q)
}
"""


def test_misses_have_reasons() -> None:
    model = make_model(HEAD_TEXT, w=seeded((16, 4), 1))
    matches, misses = find_attention(model, infer_concrete_shapes(model, {}))
    assert matches == []
    reasons = {m.op: m.reason for m in misses}
    assert "graph output" in reasons["Softmax"]
    assert "fused attention op" in reasons["com.microsoft.MultiHeadAttention"]


def test_layout_text() -> None:
    assert parse_layout("local:256,sinks:4").blocks(64) == (4, 1)
    assert parse_layout("dense").blocks(64) == (-1, 0)
    for bad in ("local:0", "sinks:4", "window:3", "local:x"):
        with pytest.raises(OptionError):
            parse_layout(bad)
    with pytest.raises((OptionError, PipelineError)):
        parse_pipeline("sparse-attention{layout=bogus}")
    p = parse_pipeline("sparse-attention{layout='local:8,sinks:4' block=4}")
    assert str(parse_pipeline(str(p))) == str(p)


def test_no_attention_is_no_change() -> None:
    model = make_model(HEAD_TEXT.replace(', "com.microsoft" : 1', "").replace(
        "  z = com.microsoft.MultiHeadAttention <num_heads = 2> (q, q, q)\n", "  z = Identity(q)\n"), w=seeded((16, 4), 1))
    records = PassManager(parse_pipeline("sparse-attention")).run(model, PassContext())
    assert not records[0].changed
    assert records[0].stats["attention_blocks"] == 0
