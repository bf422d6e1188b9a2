"""GradualPruner: Zhu & Gupta's cubic schedule, on the digits CNN trained for a few steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sparsec.errors import OptionError
from sparsec.models_zoo.digits import TrainConfig, train_model
from sparsec.models_zoo.digits_cnn import DigitsCNNConfig, init_digits_cnn
from sparsec.nm_pattern import nm_violations
from sparsec.torch import GradualPruner, cubic_sparsity, masks_of
from sparsec.torch.gradual import nm_ladder

# One epoch of 43 steps: seconds on the CPU.
ONE_EPOCH = dataclasses.replace(TrainConfig(), epochs=1)


def test_cubic_schedule() -> None:
    s = [cubic_sparsity(t, initial=0.0, final=0.9, start_step=10, end_step=30) for t in range(0, 41)]
    assert s[:11] == [0.0] * 11 and s[30:] == [0.9] * 11
    assert all(a < b for a, b in zip(s[10:30], s[11:31], strict=True))  # strictly rising in between
    assert s[20] == pytest.approx(0.9 * (1 - 0.5**3))  # s_f + (s_i - s_f)(1 - 1/2)^3
    # Front-loaded: half the way in time is past 3/4 of the way in sparsity.
    assert s[20] > 0.75 * 0.9


def test_nm_ladder_gets_stricter() -> None:
    assert [str(p) for p in nm_ladder(2, 4)] == ["7:8", "6:8", "5:8", "4:8", "2:4"]


def _train(kind: str, **options: object) -> tuple[torch.nn.Module, GradualPruner, list[str]]:
    model = init_digits_cnn(DigitsCNNConfig())
    pruner = GradualPruner(model, kind=kind, start_step=5, end_step=30, frequency=5, **options)  # type: ignore[arg-type]
    seen: list[str] = []

    def step() -> None:
        pruner.step()
        if not seen or seen[-1] != pruner.pattern_now:
            seen.append(pruner.pattern_now)

    train_model(model, ONE_EPOCH, on_step=step)  # 43 steps: 13 more after the schedule ends
    return model.eval(), pruner, seen


def _masked_nonzeros(model: torch.nn.Module) -> int:
    return sum(int((model.get_submodule(k.rpartition(".")[0]).weight[~m] != 0).sum()) for k, m in masks_of(model).items())


def test_unstructured_reaches_target_and_masks_hold() -> None:
    model, pruner, seen = _train("unstructured", final_sparsity=0.9)
    assert pruner.layers == ["conv2", "fc1"]  # conv1 (144) and fc2 (640) are under min_params
    assert pruner.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert len(seen) >= 4  # several steps of rising sparsity, not one
    assert _masked_nonzeros(model) == 0  # 13 optimizer steps after the last update changed no pruned weight
    for name in pruner.layers:
        w = model.get_submodule(name).weight
        assert float((w == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)  # per layer, as Zhu & Gupta


def test_nm_climbs_the_ladder_to_2_4() -> None:
    model, pruner, seen = _train("nm", pattern="2:4")
    assert seen[-1] == "2:4" and seen[0] in ("dense", "7:8", "6:8") and len(seen) >= 3
    for name in pruner.layers:
        w = model.get_submodule(name).weight.detach().numpy()
        assert nm_violations(w, 2, 4, axis=1) == 0
        # Exactly half of each layer is kept; 4:8 -> 2:4 can keep a weight already at zero.
        assert int(masks_of(model)[f"{name}.weight"].sum()) == w.size // 2
        assert w.size // 2 - w.size // 16 <= np.count_nonzero(w) <= w.size // 2
    assert _masked_nonzeros(model) == 0


def test_channels_zero_whole_rows_and_leave_the_classifier() -> None:
    model, pruner, _ = _train("channels", final_sparsity=0.5)
    assert "fc2" not in pruner.layers
    w = model.conv2.weight.detach()
    rows_zero = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
    assert int(rows_zero.sum()) == 16  # half of conv2's 32 output channels


def test_bad_options() -> None:
    model = init_digits_cnn(DigitsCNNConfig())
    with pytest.raises(OptionError, match="kind 'blocks'"):
        GradualPruner(model, kind="blocks", final_sparsity=0.5, end_step=10)
    with pytest.raises(OptionError, match="final_sparsity"):
        GradualPruner(model, kind="unstructured", final_sparsity=1.5, end_step=10)
    with pytest.raises(OptionError, match="start_step < end_step"):
        GradualPruner(model, kind="unstructured", final_sparsity=0.5, start_step=10, end_step=10)
    with pytest.raises(OptionError, match="invalid|N:M|n="):
        GradualPruner(model, kind="nm", pattern="5:4", end_step=10)


def test_global_scope_one_threshold() -> None:
    model, pruner, _ = _train("unstructured", final_sparsity=0.9, scope="global")
    assert pruner.sparsity() == pytest.approx(0.9, abs=1e-3)
    per_layer = [float((model.get_submodule(n).weight == 0).float().mean()) for n in pruner.layers]
    assert max(per_layer) - min(per_layer) > 0.01  # the layers end at different sparsities
    assert _masked_nonzeros(model) == 0
    with pytest.raises(OptionError, match="scope"):
        GradualPruner(model, kind="nm", pattern="2:4", end_step=10, scope="global")
