"""The zoo's GPT decoder through the real compile with `--attention=local:W,sinks:S`: every
attention block becomes the fused kernel op, and the artifact, loaded by sparsec.runtime,
gives the outputs of the reference lowering of the same layout (the end-to-end bar's path,
bench/attention_e2e_bench.py, at a test-sized sequence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsec import kernels as sk
from sparsec.artifact import write_artifact
from sparsec.calib.metrics import compare
from sparsec.capture import from_torch
from sparsec.compiler import CompileOptions, compile_model
from sparsec.dialect import DOMAIN
from sparsec.models_zoo.gpt import build_gpt
from sparsec.models_zoo.inputs import token_inputs
from sparsec.models_zoo.transformer import TransformerConfig
from sparsec.numerics import evaluate, sample_inputs
from sparsec.pm import PassContext, PassManager
from sparsec.pm.presets import preset_pipeline
from sparsec.runtime import KERNEL_DOMAIN, InferenceSession

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")

# 512 tokens = 8 blocks of 64: local 2 + 1 sink block keep 21 of the 36 causal block pairs,
# so the layout drops real blocks while the model stays test-sized.
CFG = TransformerConfig(vocab_size=100, seq_len=512, hidden=64, n_layers=2, n_heads=2, ffn=128, seed=3)
LAYOUT = "local:128,sinks:64"


def test_decoder_compiles_to_kernel_and_matches_reference(tmp_path: Path) -> None:
    model = from_torch(build_gpt(CFG), token_inputs(1, CFG.seq_len, CFG.vocab_size),
                       input_names=["input_ids"], output_names=["logits"], dynamic_batch=False)
    dense, reference = model.clone(), model.clone()
    pipeline = preset_pipeline(sparsity="none", attention=LAYOUT)
    result = compile_model(model, CompileOptions(pipeline=pipeline, bench=False, fidelity_samples=1))
    out = write_artifact(tmp_path / "out", result.files)

    graph = onnx.load(out / "model.onnx").graph
    kernels = [n for n in graph.node if (n.domain, n.op_type) == (KERNEL_DOMAIN, "SparseAttention")]
    assert len(kernels) == CFG.n_layers
    assert not any(n.domain == DOMAIN for n in graph.node), "an attention op stayed on its reference lowering"
    layouts = [d for d in result.manifest["decisions"] if d.get("pass") == "sparse-attention"]
    assert len(layouts) == CFG.n_layers
    assert all(d["causal"] and d["density"] == pytest.approx(21 / 36, abs=1e-4) for d in layouts)
    # The causal mask is computed from constants (Trilu of a constant at this length): it is
    # read as a constant and replaced by the op's causal flag, not carried as a bias input.
    rewritten = next(p for p in result.manifest["passes"] if p["pass"].startswith("sparse-attention"))["stats"]
    assert [(b["mask"], b["bias_kept"]) for b in rewritten["rewritten"]] == [("constant", False)] * CFG.n_layers
    assert all(len(n.input) == 4 for n in kernels)  # Q, K, V, layout: no bias

    # The reference: the same rewrite, run through the op's standard-ONNX lowering.
    PassManager(pipeline).run(reference, PassContext())
    feeds = sample_inputs(reference, seed=5)
    want = evaluate(reference, feeds)
    got = InferenceSession(out).run(None, feeds)
    fid = compare(want, got)
    assert fid.rel_l2 < 1e-5 and fid.max_abs < 1e-3, fid
    # The layout changed the model: a kernel quietly computing dense attention would fail here.
    dense_out = evaluate(dense, feeds)
    assert float(np.abs(dense_out[0] - got[0]).max()) > 100 * fid.max_abs
