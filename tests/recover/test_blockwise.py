"""Block-wise reconstruction: graph segments chain to the full graph, each segment's training
lowers its held-out loss, masks and N:M patterns survive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsec.calib.data import CalibrationData
from sparsec.errors import OptionError, PipelineError
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.blockwise import BlockwiseOptions, blockwise_reconstruct
from sparsec.recover.finetune import FinetuneOptions, feature_points, finetune
from sparsec.recover.torch_graph import TorchGraph, sparsity_masks

from .conftest import token_feeds


def test_segments_chain_to_the_full_graph(hf_models):  # noqa: ANN001
    model = hf_models["bert"]
    graph = TorchGraph(model)
    points = feature_points(model, model)
    feeds = token_feeds(2, seed=5)

    def weights(steps: list) -> set[str]:  # layer weights (the export shares equal 1-D constants)
        return {n for n in graph.segment_params(steps) if graph.params[graph.param_key[n]].dim() == 2}

    with torch.no_grad():
        full, captured = graph.run(feeds, points)
        value, prev = None, None
        for end in points:
            steps = graph.segment([prev] if prev else [], [end])
            value = graph.run_segment(steps, {prev: value} if prev else {}, feeds, [end])[0]
            np.testing.assert_allclose(value.numpy(), captured[end].numpy(), atol=1e-5)
            if prev:  # a segment starts at its given value: no layer before it runs again
                assert len(steps) < len(graph.steps) // 2
                assert not weights(graph.segment([], [prev])) & weights(steps) and weights(steps)
            prev = end
        tail = graph.segment([prev], graph.output_names)
        out = graph.run_segment(tail, {prev: value}, feeds, graph.output_names)[0]
    np.testing.assert_allclose(out.numpy(), full[0].numpy(), atol=1e-5)


def test_blockwise_lowers_segment_losses_and_keeps_2_4(hf_models):  # noqa: ANN001
    dense = hf_models["bert"]
    sparse = dense.clone()
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1}"), verify_numerics=False).run(sparse, PassContext())
    masks = sparsity_masks(sparse)
    assert masks
    train = CalibrationData(token_feeds(32, seed=1), batch_size=32, row_mask="attention_mask")
    val = CalibrationData(token_feeds(16, seed=2), batch_size=32, row_mask="attention_mask")
    points = feature_points(sparse, dense)
    result = blockwise_reconstruct(sparse, dense, train, val, points, BlockwiseOptions(epochs=3, lr=3e-3, batch_size=8))
    ends = [s.end for s in result.segments]
    assert ends == [*dict.fromkeys(points[::2] + points[-1:]), dense.graph.outputs[0].name]  # the tail: a final norm
    trained = [s for s in result.segments if s.params > 0 and s.loss_before > 0]
    assert trained and all(s.loss_after <= s.loss_before for s in result.segments)
    assert sum(s.loss_after < 0.9 * s.loss_before for s in trained) >= len(trained) - 1
    for name, mask in masks.items():
        w = sparse.graph.initializers[name].const_value.numpy()
        assert np.all(w[~mask] == 0) and np.count_nonzero(w) > 0.45 * w.size  # pruned entries stay zero, kept ones live


def test_finetune_runs_blockwise_first_and_the_pass_checks_its_options(hf_models):  # noqa: ANN001
    dense = hf_models["bert"]
    sparse = dense.clone()
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1}"), verify_numerics=False).run(sparse, PassContext())
    masks = sparsity_masks(sparse)
    train = CalibrationData(token_feeds(16, seed=1), batch_size=8, row_mask="attention_mask")
    val = CalibrationData(token_feeds(8, seed=2), batch_size=8, row_mask="attention_mask")
    options = FinetuneOptions(steps=2, lr=1e-3, batch_size=8, eval_every=1, progress=False, blockwise_epochs=1, blockwise_lr=3e-3)
    result = finetune(sparse, dense, train, options, validation=val)
    record = result.to_dict()["blockwise"]
    assert record is not None and len(record["segments"]) >= 2 and record["cpu_seconds"] > 0
    for name, mask in masks.items():
        assert np.all(sparse.graph.initializers[name].const_value.numpy()[~mask] == 0)
    with pytest.raises(PipelineError):
        parse_pipeline("recover{blockwise_epochs=-1}")
    with pytest.raises(OptionError):
        FinetuneOptions(blockwise_share=1.0)
