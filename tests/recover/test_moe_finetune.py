"""Fine-tuning a MoE-fied model: router and experts train, the routing structure stays, and the
written-back model verifies and runs (reference lowering and the MoEFFN kernel)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.dialect import DOMAIN
from sparsec.ir.io import save_model
from sparsec.numerics import evaluate
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.finetune import FinetuneOptions, finetune
from sparsec.testing import make_model
from sparsec.verify import verify_model

from .conftest import correlated

D, F = 16, 64


def ffn_stack(blocks: int = 2, seed: int = 0) -> ir.Model:
    """x -> (LayerNorm -> GELU FFN -> + residual) x blocks: pre-norm transformer FFNs."""
    rng = np.random.default_rng(seed)
    lines, inits, prev = [], {}, "x"
    for i in range(blocks):
        lines += [f"n{i} = LayerNormalization({prev}, g{i}, be{i})", f"h{i} = MatMul(n{i}, w1_{i})",
                  f"hb{i} = Add(h{i}, b1_{i})", f"a{i} = Gelu(hb{i})", f"o{i} = MatMul(a{i}, w2_{i})",
                  f"ob{i} = Add(o{i}, b2_{i})", f"r{i} = Add({prev}, ob{i})"]
        inits |= {f"g{i}": np.ones(D, np.float32), f"be{i}": np.zeros(D, np.float32),
                  f"w1_{i}": (rng.standard_normal((D, F)) / np.sqrt(D)).astype(np.float32),
                  f"b1_{i}": (0.1 * rng.standard_normal(F)).astype(np.float32),
                  f"w2_{i}": (rng.standard_normal((F, D)) / np.sqrt(F)).astype(np.float32),
                  f"b2_{i}": (0.1 * rng.standard_normal(D)).astype(np.float32)}
        prev = f"r{i}"
    lines.append(f"y = LayerNormalization({prev}, gy, by)")
    inits |= {"gy": np.ones(D, np.float32), "by": np.zeros(D, np.float32)}
    text = (f'<ir_version: 10, opset_import: ["" : 20]>\nffn (float[N, {D}] x) => (float[N, {D}] y) {{\n'
            + "\n".join(lines) + "\n}")
    return make_model(text, **inits)


def _moe_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type == "MoE"]


def _moefied(dense: ir.Model, calib: CalibrationData) -> ir.Model:
    student = dense.clone()
    pipeline = "moefy-ffn{experts=8 top_k=2 method=coactivation router=learned}"
    PassManager(parse_pipeline(pipeline), verify_numerics=False).run(student, PassContext(calibration=calib))
    assert len(_moe_nodes(student)) == 2
    return student


@pytest.fixture(scope="module")
def data() -> tuple[CalibrationData, CalibrationData, CalibrationData]:
    return tuple(CalibrationData({"x": correlated(n, D, seed=s)}, batch_size=32) for n, s in ((256, 1), (64, 2), (128, 3)))


@pytest.mark.parametrize("router_weight", [0.0, 1.0])
def test_moefied_model_finetunes_and_keeps_its_routing(data, router_weight: float) -> None:  # noqa: ANN001
    calib, val, held = data
    dense = ffn_stack()
    student = _moefied(dense, calib)
    structure = [(n.attributes["top_k"].as_int(), n.inputs[3].const_value.shape) for n in _moe_nodes(student)]
    before = {v.name: v.const_value.numpy().copy() for n in _moe_nodes(student) for v in n.inputs[1:] if v is not None}
    want = run_outputs(dense, held)
    cos_before = mean_cosine(want, run_outputs(student, held))
    result = finetune(student, dense, calib, FinetuneOptions(steps=80, lr=3e-3, eval_every=20, progress=False,
                                                             router_weight=router_weight), validation=val)
    losses = [v for _, v in result.losses]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert result.cosine_after > result.cosine_before and result.best_step > 0
    assert mean_cosine(want, run_outputs(student, held)) > cos_before  # on samples neither step saw
    nodes = _moe_nodes(student)
    assert [(n.attributes["top_k"].as_int(), n.inputs[3].const_value.shape) for n in nodes] == structure
    assert verify_model(student) == []
    after = {v.name: v.const_value.numpy() for n in nodes for v in n.inputs[1:] if v is not None}
    assert after.keys() == before.keys()
    changed = {name for name in after if not np.array_equal(after[name], before[name])}
    assert {v.name for n in nodes for v in (n.inputs[3], n.inputs[5])} <= changed  # experts trained
    # gating=none: the router is trained only through the distillation term.
    routers = {n.inputs[1].name for n in nodes}
    assert routers <= changed if router_weight > 0 else not routers & changed
    x = held.arrays["x"][:32]
    reference = evaluate(student, {"x": x})[0]
    PassManager(parse_pipeline("lower-moe-kernels"), verify_numerics=False).run(student, PassContext())
    assert not _moe_nodes(student)
    np.testing.assert_allclose(evaluate(student, {"x": x})[0], reference, rtol=1e-4, atol=1e-4)


def sparsec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsec.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sparsec_finetune_on_a_moe_artifact(tmp_path, data) -> None:  # noqa: ANN001
    calib, val, _ = data
    src = tmp_path / "ffn.onnx"
    save_model(ffn_stack(), src)
    data_file, val_file = tmp_path / "calib.npz", tmp_path / "val.npz"
    np.savez(data_file, x=calib.arrays["x"])
    np.savez(val_file, x=val.arrays["x"])
    out = tmp_path / "art"
    r = sparsec("-q", "compile", str(src), "--moe=experts:8,active:0.25,router:learned", "--calib", str(data_file),
                "--no-bench", "--min-cosine=0", "-o", str(out))  # one-shot routing is lossy: the fine-tune repairs it
    assert r.returncode == 0, r.stderr
    before = ir.load(str(out / "model.onnx"))
    kernels = [n for n in before.graph if n.op_type == "MoEFFN"]
    assert len(kernels) == 2
    r = sparsec("finetune", str(out), "--calib", str(data_file), "--val", str(val_file), "--steps", "40", "--lr", "0.003",
                "--router-weight", "1")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recovery"]["cosine_after"] > manifest["recovery"]["cosine_before"]
    after = ir.load(str(out / "model.onnx"))
    assert [(n.op_type, n.attributes["top_k"].as_int()) for n in after.graph if n.op_type == "MoEFFN"] == [
        ("MoEFFN", n.attributes["top_k"].as_int()) for n in kernels]
    trained = [name for name, v in after.graph.initializers.items()
               if not np.array_equal(v.const_value.numpy(), before.graph.initializers[name].const_value.numpy())]
    assert any(name in trained for n in kernels for name in (n.inputs[1].name, n.inputs[3].name))


def test_recover_pass_after_moefy_ffn(data) -> None:  # noqa: ANN001
    calib, _, _ = data
    model = ffn_stack()
    ctx = PassContext(calibration=calib)
    text = "moefy-ffn{experts=8 top_k=2 method=coactivation router=learned},recover{steps=40 lr=0.003 eval_every=10 router_weight=1}"
    records = PassManager(parse_pipeline(text), verify_numerics=False).run(model, ctx)
    stats = records[-1].stats
    assert stats["cosine_after"] > stats["cosine_before"] and stats["best_step"] > 0
    assert [n.attributes["top_k"].as_int() for n in _moe_nodes(model)] == [2, 2] and verify_model(model) == []
