"""Existing MoE models: tiny Hugging Face Qwen2-MoE (shared expert behind a sigmoid gate,
un-renormalised top-k weights: `norm_topk_prob=False` as Qwen1.5/Qwen2-MoE ship) and Qwen3-MoE
(renormalised, as Qwen3-MoE ships), 2 layers, 4 experts, top-2, hidden 32, random weights
from a config, exported by the TorchScript exporter (batched and looped experts) and the
dynamo exporter. The routed experts are lifted with `softmax_all` / `softmax` gating, the
shared expert stays as graph nodes; `prune-experts` and `moe-top-k` are checked against the
PyTorch model changed the same way."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.cli.main import main
from sparsec.dialect import DOMAIN
from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import model_bytes
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager
from sparsec.pm.pipeline import parse_pipeline

SEQ, EXPERTS, LAYERS = 8, 4, 2
TRACE = np.random.default_rng(7).integers(0, 100, (1, SEQ)).astype(np.int64)  # the looped export runs inputs routed like it
GATING = {"qwen2": "softmax_all", "qwen3": "softmax"}
FORMS = [("qwen2", "batched_mm", False), ("qwen2", "eager", False), ("qwen3", "batched_mm", False), ("qwen2", "batched_mm", True)]


def _qwen(kind: str, form: str = "batched_mm"):  # noqa: ANN202  (a torch module)
    import torch
    import transformers as T

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    common = dict(vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=2,
                  num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=64,
                  max_position_embeddings=32, norm_topk_prob=kind == "qwen3")
    if kind == "qwen2":
        inner = T.Qwen2MoeModel(T.Qwen2MoeConfig(shared_expert_intermediate_size=48, **common))
    else:
        inner = T.Qwen3MoeModel(T.Qwen3MoeConfig(**common))
    inner.set_experts_implementation(form)

    class Encoder(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids).last_hidden_state

    return Encoder(inner.eval()).eval()


@pytest.fixture(scope="session")
def qwen(tmp_path_factory) -> dict[tuple[str, str, bool], Path]:  # noqa: ANN001
    """(kind, form, dynamo) -> ONNX export of the kind's fixed weights."""
    import torch

    folder = tmp_path_factory.mktemp("qwen")
    paths = {}
    for kind, form, dynamo in FORMS:
        path = folder / f"{kind}_{form}_{'dynamo' if dynamo else 'legacy'}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_qwen(kind, form), (torch.from_numpy(TRACE),), str(path), dynamo=dynamo, opset_version=18,
                              input_names=["ids"], **({"verbose": False} if dynamo else {}))
        paths[(kind, form, dynamo)] = path
    return paths


def _ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 100, (n, SEQ)).astype(np.int64)


def _run(model: ir.Model, ids: np.ndarray) -> np.ndarray:
    model = model.clone()
    lower_to_reference(model)
    sess = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])  # dynamo: external data inlined
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: ids[i:i + 1]})[0] for i in range(len(ids))])


def _torch(kind: str, ids: np.ndarray, change=None) -> np.ndarray:  # noqa: ANN001
    import torch

    model = _qwen(kind)
    if change is not None:
        change(model)
    with torch.no_grad():
        return model(torch.from_numpy(ids)).numpy()


def _apply(path: Path, pipeline: str, looped: bool = False) -> tuple[ir.Model, PassContext]:
    model = ir.load(path)
    feed = next(v.name for v in model.graph.inputs)
    ids = np.concatenate([TRACE, _ids(23, seed=2)])  # the trace input first: lifting matches on the first batch
    ctx = PassContext(calibration=CalibrationData({feed: ids}, batch_size=1))
    PassManager(parse_pipeline(pipeline), verify_numerics=not looped).run(model, ctx)
    return model, ctx


def _shared_expert_gates(model: ir.Model) -> int:
    """MatMuls / Gemms by a constant [D, 1] or [1, D] (Qwen2's shared_expert_gate) still in the graph."""
    return sum(n.op_type in ("MatMul", "Gemm") and n.inputs[1].const_value is not None
               and n.inputs[1].const_value.shape in ((32, 1), (1, 32)) for n in model.graph)


def _moe(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type == "MoE"]


@pytest.mark.parametrize(("kind", "form", "dynamo"), FORMS, ids=["qwen2-batched", "qwen2-looped", "qwen3-batched", "qwen2-dynamo"])
def test_lifts_the_routed_experts(qwen, kind: str, form: str, dynamo: bool) -> None:  # noqa: ANN001
    model, ctx = _apply(qwen[(kind, form, dynamo)], "lift-moe", looped=form == "eager")
    nodes = _moe(model)
    assert len(nodes) == LAYERS and all(n.attributes["gating"].as_string() == GATING[kind] for n in nodes)
    assert not any(n.op_type == "TopK" for n in model.graph)
    lifts = [d for d in ctx.decisions if d["decision"] == "lift"]
    assert len(lifts) == LAYERS and all(d["activation"] == "silu" and d["match_rel_l2"] < 1e-4 for d in lifts)
    # Qwen2's shared expert (sigmoid-gated SwiGLU) stays as graph nodes after the lifted op.
    assert all(("kept_as_graph" in d) == (kind == "qwen2") for d in lifts)
    assert _shared_expert_gates(model) == (LAYERS if kind == "qwen2" else 0)
    ids = _ids(6)
    np.testing.assert_allclose(_run(model, ids), _torch(kind, ids), atol=2e-5)


def test_prune_experts_matches_the_model_without_them(qwen) -> None:  # noqa: ANN001
    import torch

    model, ctx = _apply(qwen[("qwen2", "batched_mm", False)], "prune-experts{keep=0.5}")
    nodes = _moe(model)
    assert [n.inputs[3].const_value.shape[0] for n in nodes] == [2, 2]
    assert all(n.attributes["gating"].as_string() == "softmax_all" for n in nodes)
    decisions = [d for d in ctx.decisions if d["pass"] == "prune-experts" and d["decision"].startswith("keep")]
    assert len(decisions) == LAYERS
    for d in decisions:
        assert min(d["selected_share"][i] for i in d["kept"]) >= max(d["selected_share"][i] for i in d["dropped"])
        assert abs(sum(d["mean_gate"]) - 1.0) > 1e-3  # top-2 of a softmax over 4: the gates do not sum to 1
        assert 0 < d["cosine"] < 1

    # PyTorch without the dropped experts: its softmax runs over the kept ones, top-k not renormalised.
    def prune(m: torch.nn.Module) -> None:
        for layer, d in zip(m.inner.layers, decisions, strict=True):
            kept = torch.tensor(d["kept"])
            moe = layer.mlp
            moe.gate.weight = torch.nn.Parameter(moe.gate.weight[kept])
            moe.gate.num_experts = moe.experts.num_experts = len(kept)
            moe.experts.gate_up_proj = torch.nn.Parameter(moe.experts.gate_up_proj[kept])
            moe.experts.down_proj = torch.nn.Parameter(moe.experts.down_proj[kept])

    ids = _ids(6)
    np.testing.assert_allclose(_run(model, ids), _torch("qwen2", ids, prune), atol=2e-5)


def test_merge_experts_keeps_the_gating(qwen) -> None:  # noqa: ANN001
    model, ctx = _apply(qwen[("qwen2", "batched_mm", False)], "merge-experts{keep=0.5}")
    nodes = _moe(model)
    assert [n.inputs[3].const_value.shape[0] for n in nodes] == [2, 2]
    assert all(n.attributes["gating"].as_string() == "softmax_all" for n in nodes)
    decisions = [d for d in ctx.decisions if d["pass"] == "merge-experts" and d["decision"].startswith("merge")]
    assert len(decisions) == LAYERS and all(0 < d["cosine"] <= 1 for d in decisions)
    out = _run(model, _ids(3))
    assert np.isfinite(out).all() and out.shape == (3, SEQ, 32)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_top_k_reduction_matches_pytorch(qwen, kind: str) -> None:  # noqa: ANN001
    model, ctx = _apply(qwen[(kind, "batched_mm", False)], "moe-top-k{k=1}")
    assert [n.attributes["top_k"].as_int() for n in _moe(model)] == [1, 1]
    decisions = [d for d in ctx.decisions if d["pass"] == "moe-top-k" and d["decision"] == "top_k 2 -> 1"]
    assert len(decisions) == LAYERS and all(d["cosine"] < 1 for d in decisions)

    def top1(m) -> None:  # noqa: ANN001
        for layer in m.inner.layers:
            layer.mlp.gate.top_k = 1

    ids = _ids(6)
    np.testing.assert_allclose(_run(model, ids), _torch(kind, ids, top1), atol=2e-5)


def test_compile_prunes_and_reduces_top_k_with_fidelity(qwen, tmp_path: Path) -> None:  # noqa: ANN001
    calib = tmp_path / "calib.npz"
    np.savez(calib, ids=_ids(40))
    out = tmp_path / "out"
    assert main(["-q", "compile", str(qwen[("qwen2", "batched_mm", False)]), "--moe=prune-experts:0.5,top-k:1",
                 "--sparsity=none", "--no-tune", "--no-bench", "--calib", str(calib), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = [(d["pass"], d["decision"]) for d in manifest["decisions"]]
    assert kinds.count(("prune-experts", "keep 2/4 experts")) == LAYERS
    assert kinds.count(("moe-top-k", "top_k 2 -> 1")) == LAYERS
    assert manifest["fidelity"]["data"] == "held-out calibration samples" and 0 < manifest["fidelity"]["worst_cosine"] <= 1
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    from sparsec.kernels import kernels_available

    assert ("MoEFFN" in ops) == kernels_available()
