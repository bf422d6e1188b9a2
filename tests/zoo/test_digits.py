from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsec.models_zoo.digits import (
    evaluate_accuracy,
    load_digits_split,
    train_digits_cnn,
)


def test_split_is_fixed_disjoint_and_stratified() -> None:
    x_train, y_train, x_test, y_test = load_digits_split()
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert torch.bincount(y_test, minlength=10).min() >= 40  # ~25% of each class (>=174)
    train_rows = {tuple(r.tolist()) for r in x_train.flatten(1)}
    # load_digits has a few duplicate images; almost all test images must be unseen.
    overlap = sum(tuple(r.tolist()) in train_rows for r in x_test.flatten(1))
    assert overlap < 5
    again = load_digits_split()
    assert torch.equal(again[2], x_test) and torch.equal(again[3], y_test)


def test_trained_cnn_is_accurate_and_cached(zoo_cache_dir: Path) -> None:
    _, _, x_test, y_test = load_digits_split()
    model = train_digits_cnn()
    assert evaluate_accuracy(model, x_test, y_test) >= 0.95
    cached = list((zoo_cache_dir / "zoo").glob("digits_cnn-*.pt"))
    assert len(cached) == 1
    reloaded = train_digits_cnn()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_evaluate_accuracy_accepts_callables() -> None:
    x = torch.zeros(4, 1, 8, 8)
    y = torch.tensor([0, 1, 1, 1])
    logits = torch.tensor([[0.0, 1.0]]).expand(4, 2)
    assert evaluate_accuracy(lambda batch: logits[: len(batch)], x, y) == 0.75


@pytest.mark.slow
def test_training_is_deterministic() -> None:
    rng_before = torch.get_rng_state()
    a = train_digits_cnn(epochs=2, use_cache=False)
    b = train_digits_cnn(epochs=2, use_cache=False)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
