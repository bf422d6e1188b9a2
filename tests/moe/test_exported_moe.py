"""Existing MoE models: a tiny Hugging Face Mixtral (2 layers, 4 experts, top-2, hidden 32,
random weights from a config) exported by the TorchScript exporter in its batched and
looped expert forms. The matcher finds and lifts the blocks; `prune-experts` and `moe-top-k`
change what they claim, checked against the PyTorch model changed the same way."""

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
from sparsec.passes.moe.exported_moe import find_exported_moe
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager
from sparsec.pm.pipeline import parse_pipeline

SEQ, EXPERTS, LAYERS = 8, 4, 2
# The looped (eager) export traces data-dependent expert splits: that graph runs only inputs
# routed like the trace input (the exporter's limitation, not ours; the lifted graph runs all).
TRACE = np.random.default_rng(7).integers(0, 100, (1, SEQ)).astype(np.int64)


def _mixtral():  # noqa: ANN202  (a torch module)
    import torch
    import transformers as T

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    cfg = T.MixtralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=EXPERTS,
                          num_experts_per_tok=2, max_position_embeddings=32)

    class Encoder(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids).last_hidden_state

    return Encoder(T.MixtralModel(cfg).eval()).eval()


@pytest.fixture(scope="session")
def mixtral(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    """form ('batched_mm', 'eager' = looped experts) -> TorchScript export of the same weights."""
    import torch

    folder = tmp_path_factory.mktemp("mixtral")
    paths = {}
    for form in ("batched_mm", "eager"):
        model = _mixtral()
        model.inner.set_experts_implementation(form)
        paths[form] = folder / f"mixtral_{form}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.from_numpy(TRACE),), str(paths[form]), dynamo=False,
                              opset_version=18, input_names=["ids"])
    return paths


def _ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 100, (n, SEQ)).astype(np.int64)


def _run(model: ir.Model, ids: np.ndarray, tmp_path: Path) -> np.ndarray:
    model = model.clone()
    lower_to_reference(model)
    path = tmp_path / "lowered.onnx"
    ir.save(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"ids": ids[i:i + 1]})[0] for i in range(len(ids))])


def _torch(ids: np.ndarray, change=None) -> np.ndarray:  # noqa: ANN001
    import torch

    model = _mixtral()
    model.inner.set_experts_implementation("batched_mm")
    if change is not None:
        change(model)
    with torch.no_grad():
        return model(torch.from_numpy(ids)).numpy()


def _apply(path: Path, pipeline: str, calib: bool = True) -> tuple[ir.Model, PassContext]:
    """Run the pipeline; calibration data (the trace input first: lifting matches on the first
    batch) or none (random sample inputs)."""
    model = ir.load(path)
    ids = np.concatenate([TRACE, _ids(23, seed=2)])
    ctx = PassContext(calibration=CalibrationData({"ids": ids}, batch_size=1) if calib else None)
    PassManager(parse_pipeline(pipeline), verify_numerics="eager" not in path.name).run(model, ctx)
    return model, ctx


def _moe(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type == "MoE"]


@pytest.mark.parametrize("form", ["batched_mm", "eager"])
def test_matcher_finds_and_lifts_the_blocks(mixtral, form: str, tmp_path: Path) -> None:  # noqa: ANN001
    blocks, misses = find_exported_moe(ir.load(mixtral[form]))
    assert len(blocks) == LAYERS and not misses
    assert all(b.top_k == 2 and b.router_weight.shape == (32, EXPERTS) for b in blocks)
    model, ctx = _apply(mixtral[form], "lift-moe", calib=form == "eager")  # batched: data-free
    nodes = _moe(model)
    assert len(nodes) == LAYERS and all(n.attributes["gating"].as_string() == "softmax" for n in nodes)
    assert not any(n.op_type == "TopK" for n in model.graph)  # the exported routing is gone
    lifts = [d for d in ctx.decisions if d["decision"] == "lift"]
    assert len(lifts) == LAYERS and all(d["activation"] == "silu" and d["match_rel_l2"] < 1e-4 for d in lifts)
    assert {d["match_inputs"] for d in lifts} == {"calibration" if form == "eager" else "random sample inputs"}
    ids = _ids(6)
    np.testing.assert_allclose(_run(model, ids, tmp_path), _torch(ids), atol=2e-5)


def test_matcher_reports_a_block_it_cannot_reproduce(mixtral) -> None:  # noqa: ANN001
    # Swap the experts' stacked weights for ones of another expert count: no longer E-leading.
    model = ir.load(mixtral["batched_mm"])
    for value in list(model.graph.initializers.values()):
        if value.name.endswith("experts.down_proj"):
            value.const_value = ir.tensor(np.zeros((EXPERTS + 1, 32, 64), np.float32), name=value.name)
    blocks, misses = find_exported_moe(model)
    assert not blocks and len(misses) == LAYERS and all("stacked expert weight tensors" in m.reason for m in misses)


def test_prune_experts_keeps_the_most_used_half(mixtral, tmp_path: Path) -> None:  # noqa: ANN001
    import torch

    model, ctx = _apply(mixtral["batched_mm"], "prune-experts{keep=0.5}")
    nodes = _moe(model)
    assert [n.inputs[3].const_value.shape[0] for n in nodes] == [2, 2]
    assert [n.inputs[1].const_value.shape[1] for n in nodes] == [2, 2]
    decisions = [d for d in ctx.decisions if d["pass"] == "prune-experts" and d["decision"].startswith("keep")]
    assert len(decisions) == LAYERS
    for d in decisions:
        share = d["selected_share"]
        assert d["experts_after"] == 2 and len(share) == EXPERTS and abs(sum(share) - 2.0) < 1e-6  # top-2 shares
        assert min(share[i] for i in d["kept"]) >= max(share[i] for i in d["dropped"])
        assert d["statistics_inputs"] == "calibration" and 0 < d["cosine"] <= 1

    def prune(m: torch.nn.Module) -> None:  # the same experts dropped in PyTorch
        for layer, d in zip(m.inner.layers, decisions, strict=True):
            kept = torch.tensor(d["kept"])
            moe = layer.mlp
            moe.gate.weight = torch.nn.Parameter(moe.gate.weight[kept])
            moe.gate.num_experts = moe.experts.num_experts = len(kept)
            moe.experts.gate_up_proj = torch.nn.Parameter(moe.experts.gate_up_proj[kept])
            moe.experts.down_proj = torch.nn.Parameter(moe.experts.down_proj[kept])

    ids = _ids(6)
    np.testing.assert_allclose(_run(model, ids, tmp_path), _torch(ids, prune), atol=2e-5)


def test_merge_experts_folds_similar_experts(mixtral, tmp_path: Path) -> None:  # noqa: ANN001
    model, ctx = _apply(mixtral["batched_mm"], "merge-experts{keep=0.5}")
    nodes = _moe(model)
    assert [n.inputs[3].const_value.shape[0] for n in nodes] == [2, 2]  # stacked experts
    assert [n.inputs[1].const_value.shape[1] for n in nodes] == [2, 2]  # router columns
    decisions = [d for d in ctx.decisions if d["pass"] == "merge-experts" and d["decision"].startswith("merge")]
    assert len(decisions) == LAYERS
    for d in decisions:
        assert sorted(i for g in d["groups"] for i in g) == list(range(EXPERTS)) and len(d["groups"]) == 2
        share = d["selected_share"]
        for group, dominant in zip(d["groups"], d["dominant"], strict=True):
            assert dominant in group and share[dominant] == max(share[i] for i in group)
        assert d["aligned"] and d["statistics_inputs"] == "calibration" and 0 < d["cosine"] <= 1
    out = _run(model, _ids(6), tmp_path)
    assert np.isfinite(out).all() and out.shape == _torch(_ids(6)).shape


def test_top_k_reduction_runs_one_expert(mixtral, tmp_path: Path) -> None:  # noqa: ANN001
    model, ctx = _apply(mixtral["eager"], "moe-top-k{k=1}")
    assert [n.attributes["top_k"].as_int() for n in _moe(model)] == [1, 1]
    decisions = [d for d in ctx.decisions if d["pass"] == "moe-top-k" and d["decision"] == "top_k 2 -> 1"]
    assert len(decisions) == LAYERS and all(d["cosine"] < 1 for d in decisions)

    def top1(m) -> None:  # noqa: ANN001
        for layer in m.inner.layers:
            layer.mlp.top_k = layer.mlp.gate.top_k = 1

    ids = _ids(6)
    np.testing.assert_allclose(_run(model, ids, tmp_path), _torch(ids, top1), atol=2e-5)


def test_prune_needs_calibration_data(mixtral, capsys) -> None:  # noqa: ANN001
    assert main(["-q", "opt", str(mixtral["batched_mm"]), "-p", "prune-experts{keep=0.5}", "-o", "unused.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs calibration data" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("spec", "message"), [("prune-experts:1.5", "fraction of experts to keep"),
                                               ("top-k:0", "positive whole number"),
                                               ("prune-experts:0.5,experts:4", "do not mix")])
def test_bad_slim_specs_fail_with_one_line(capsys, spec: str, message: str) -> None:  # noqa: ANN001
    assert main(["pipeline", "show", f"--moe={spec}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsec: error:") and message in err and len(err.splitlines()) == 1


def test_compile_prunes_and_reduces_top_k_with_fidelity(mixtral, tmp_path: Path) -> None:  # noqa: ANN001
    calib = tmp_path / "calib.npz"
    np.savez(calib, ids=_ids(40))
    out = tmp_path / "out"
    assert main(["-q", "compile", str(mixtral["batched_mm"]), "--moe=prune-experts:0.5,top-k:1", "--sparsity=none",
                 "--no-tune", "--no-bench", "--calib", str(calib), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = [(d["pass"], d["decision"]) for d in manifest["decisions"]]
    assert kinds.count(("prune-experts", "keep 2/4 experts")) == LAYERS
    assert kinds.count(("moe-top-k", "top_k 2 -> 1")) == LAYERS
    assert manifest["fidelity"]["data"] == "held-out calibration samples" and 0 < manifest["fidelity"]["worst_cosine"] <= 1
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    from sparsec.kernels import kernels_available

    assert ("MoEFFN" in ops) == kernels_available()
