"""Fine-tuning is judged on a separate validation set, never hands back weights worse on it
than the start, keeps every 2:4 group, and its cached teacher targets equal the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.errors import InternalError
from sparsec.nm_pattern import nm_violations
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.finetune import FinetuneOptions, _rows, _TeacherTargets, check_masks, finetune
from sparsec.recover.torch_graph import TorchGraph, sparsity_masks

from .conftest import correlated, token_feeds


def _nm(model):  # noqa: ANN001, ANN202
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1}"), verify_numerics=False).run(model, PassContext())
    return model


def _violations(model) -> int:  # noqa: ANN001
    return sum(nm_violations(model.graph.initializers[n].const_value.numpy(), 2, 4, 0) for n in ("w1", "w2"))


def test_diverging_run_keeps_the_start_and_the_pattern(mlp, mlp_calib):  # noqa: ANN001
    sparse = _nm(mlp.clone())
    val = CalibrationData({"x": correlated(64, 16, seed=9)}, batch_size=32)
    start = mean_cosine(run_outputs(mlp, val), run_outputs(sparse, val))
    # lr 10 wrecks the weights from the first step: every evaluation is worse than the start.
    result = finetune(sparse, mlp, mlp_calib, FinetuneOptions(steps=6, lr=10.0, eval_every=2, warmup=0.0, progress=False),
                      validation=val)
    assert result.best_step == 0 and result.validation.startswith("64 separate samples")
    assert result.held_out_curve[0] == (0, pytest.approx(start, abs=1e-5))
    assert all(score < start for _, score in result.held_out_curve[1:])
    assert mean_cosine(run_outputs(mlp, val), run_outputs(sparse, val)) == pytest.approx(start, abs=1e-6)
    assert _violations(sparse) == 0


def test_useful_run_improves_the_separate_validation_set_and_keeps_2_4(mlp, mlp_calib):  # noqa: ANN001
    sparse = _nm(mlp.clone())
    val = CalibrationData({"x": correlated(64, 16, seed=9)}, batch_size=32)
    result = finetune(sparse, mlp, mlp_calib, FinetuneOptions(steps=40, lr=3e-3, eval_every=10, progress=False), validation=val)
    assert result.best_step > 0 and result.cosine_after > result.cosine_before
    assert mean_cosine(run_outputs(mlp, val), run_outputs(sparse, val)) == pytest.approx(result.cosine_after, abs=1e-5)
    assert _violations(sparse) == 0


def test_bf16_steps_improve_the_validation_set_keep_2_4_and_float32_weights(mlp, mlp_calib, monkeypatch):  # noqa: ANN001
    """`bf16`: the training steps run under torch's bfloat16 autocast, the validation scoring
    does not; the weights written back stay float32, the 2:4 groups stay intact and the
    validation set improves."""
    seen = []
    real = TorchGraph.run

    def spy(self, feeds, capture=()):  # noqa: ANN001, ANN202
        outputs, captured = real(self, feeds, capture)
        seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return outputs, captured

    monkeypatch.setattr(TorchGraph, "run", spy)
    sparse = _nm(mlp.clone())
    val = CalibrationData({"x": correlated(64, 16, seed=9)}, batch_size=32)
    result = finetune(sparse, mlp, mlp_calib, FinetuneOptions(steps=40, lr=3e-3, eval_every=10, progress=False, bf16=True),
                      validation=val)
    assert (True, True) in seen  # a training step's student, under autocast
    assert (False, False) in seen  # validation scoring, in float32
    assert result.best_step > 0 and result.cosine_after > result.cosine_before
    assert all(sparse.graph.initializers[n].const_value.numpy().dtype == np.float32 for n in ("w1", "w2"))
    assert _violations(sparse) == 0


def test_cpu_time_limit_stops_the_run(mlp, mlp_calib):  # noqa: ANN001
    result = finetune(_nm(mlp.clone()), mlp, mlp_calib,
                      FinetuneOptions(steps=10_000, lr=1e-3, max_cpu_seconds=0.5, progress=False))
    assert result.steps_run < 10_000 and "CPU-s" in result.stopped


def test_check_masks_catches_a_broken_pattern(mlp):  # noqa: ANN001
    sparse = _nm(mlp.clone())
    masks = sparsity_masks(sparse)
    check_masks(sparse, masks)
    w = sparse.graph.initializers["w1"].const_value.numpy().copy()
    w[~masks["w1"]] = 1.0
    import onnx_ir as ir

    sparse.graph.initializers["w1"].const_value = ir.tensor(w, name="w1")
    with pytest.raises(InternalError, match="w1"):
        check_masks(sparse, masks)


def test_cached_teacher_targets_equal_the_torch_teacher(hf_models):  # noqa: ANN001
    model = hf_models["bert"]
    train = CalibrationData(token_feeds(12, seed=3), batch_size=4, row_mask="attention_mask")
    points = [n.outputs[0].name for n in model.graph if n.op_type == "LayerNormalization"][:3]
    outputs = [v.name for v in model.graph.outputs]
    cache = _TeacherTargets(model, train, outputs, points)
    take = [7, 2]  # the export has a fixed batch of 2
    batch = {k: v[take] for k, v in train.arrays.items()}
    mask = torch.from_numpy(batch["attention_mask"] != 0)
    with torch.no_grad():
        t_out, t_feat = TorchGraph(model, trainable=()).run(batch, points)
    c_out, c_feat = cache.get(take)
    for a, b in zip(c_out, t_out, strict=True):
        np.testing.assert_allclose(a.numpy(), _rows(b, mask).numpy(), rtol=1e-4, atol=1e-4)
    for p in points:  # features are kept in fp16
        np.testing.assert_allclose(c_feat[p].numpy(), _rows(t_feat[p], mask).numpy(), rtol=2e-3, atol=2e-3)
