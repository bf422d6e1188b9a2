"""The sklearn 8x8 digits data set and deterministic training of the digits CNN.

``load_digits`` ships inside scikit-learn, so nothing is downloaded. Training is seeded
through a local ``torch.Generator`` and runs single-threaded, so the trained weights are
the same on every run (and machine with the same torch build); they are cached on disk
keyed by a hash of the model and training config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cache import cache_dir, config_key, load_state_dict, save_state_dict
from .digits_cnn import DigitsCNNConfig, init_digits_cnn
from .digits_mlp import DigitsMLPConfig, init_digits_mlp

log = logging.getLogger(__name__)

# Bump when the data split, model or training code changes meaning: invalidates the cache.
TRAINING_CODE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    test_fraction: float = 0.25
    split_seed: int = 0


def load_digits_split(
    test_fraction: float = 0.25, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); x float32 [N, 1, 8, 8] scaled to [0, 1], y int64.

    The split is stratified per class with a fixed seed, so it never changes.
    """
    from sklearn.datasets import load_digits  # optional dependency: import on use

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    test_idx: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        test_idx.append(rng.permutation(idx)[: round(len(idx) * test_fraction)])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(labels)), test)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    return x[train], y[train], x[test], y[test]


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    # One intra-op thread: float reductions then run in a fixed order, making training bitwise
    # reproducible regardless of the machine's core count.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _train(model: nn.Module, cfg: TrainConfig, on_step: Callable[[], None] | None = None) -> None:
    x_train, y_train, _, _ = load_digits_split(cfg.test_fraction, cfg.split_seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            if on_step is not None:  # e.g. a gradual pruner's schedule (sparsec.torch)
                on_step()
            total += loss.item() * len(idx)
        sched.step()
        log.debug("digits epoch %d: loss %.4f", epoch, total / len(order))
    model.eval()


def train_model(model: nn.Module, cfg: TrainConfig, on_step: Callable[[], None] | None = None) -> nn.Module:
    """Train `model` on the digits training split exactly as the zoo does (seeded,
    single-threaded), calling `on_step()` after every optimizer step; not cached."""
    with _single_thread(), torch.random.fork_rng(devices=[]):
        _train(model, cfg, on_step)
    return model


def steps_per_epoch(cfg: TrainConfig) -> int:
    n = len(load_digits_split(cfg.test_fraction, cfg.split_seed)[0])
    return -(-n // cfg.batch_size)


def train_digits_cnn(
    epochs: int | None = None,
    model_cfg: DigitsCNNConfig | None = None,
    train_cfg: TrainConfig | None = None,
    use_cache: bool = True,
) -> nn.Module:
    """The trained digits CNN (eval mode), from the cache when present, else trained (~seconds)."""
    model_cfg = model_cfg or DigitsCNNConfig()
    return _trained("digits_cnn", init_digits_cnn(model_cfg), model_cfg, epochs, train_cfg, use_cache)


# The wide MLP needs fewer epochs: it fits the training split in a few passes.
MLP_TRAIN = TrainConfig(epochs=6, batch_size=64, lr=1e-3)


def train_digits_mlp(
    epochs: int | None = None,
    model_cfg: DigitsMLPConfig | None = None,
    train_cfg: TrainConfig | None = None,
    use_cache: bool = True,
) -> nn.Module:
    """The trained wide digits MLP (eval mode), cached like the CNN (~1 minute to train)."""
    model_cfg = model_cfg or DigitsMLPConfig()
    train_cfg = train_cfg or MLP_TRAIN
    return _trained("digits_mlp", init_digits_mlp(model_cfg), model_cfg, epochs, train_cfg, use_cache)


def _trained(
    name: str,
    model: nn.Module,
    model_cfg: object,
    epochs: int | None,
    train_cfg: TrainConfig | None,
    use_cache: bool,
) -> nn.Module:
    train_cfg = train_cfg or TrainConfig()
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    key = config_key(
        {
            "version": TRAINING_CODE_VERSION,
            "model": dataclasses.asdict(model_cfg),  # type: ignore[call-overload]
            "train": dataclasses.asdict(train_cfg),
            "torch": torch.__version__,
        }
    )
    path = cache_dir() / f"{name}-{key}.pt"
    state = load_state_dict(path) if use_cache else None
    if state is not None:
        model.load_state_dict(state)
        log.info("%s loaded from %s", name, path)
        return model.eval()
    log.info("training %s on sklearn digits (cached afterwards)", name)
    with _single_thread(), torch.random.fork_rng(devices=[]):
        # fork_rng: nothing here should draw from the global RNG, but if an op did, the
        # caller's random state would still be left as it was.
        _train(model, train_cfg)
    if use_cache:
        save_state_dict(model.state_dict(), path)
        log.info("%s trained and cached at %s", name, path)
    return model


def evaluate_accuracy(
    model_or_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of a module or of any callable mapping a batch to logits."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = torch.as_tensor(model_or_fn(x[start : start + batch_size]))
            correct += int((logits.argmax(dim=-1) == y[start : start + batch_size]).sum())
    return correct / len(x)


def digits_inputs(batch: int) -> tuple[torch.Tensor]:
    """The first ``batch`` test images (real data; the test split has 450 images)."""
    _, _, x_test, _ = load_digits_split()
    if batch > len(x_test):
        raise ValueError(f"batch {batch} exceeds the {len(x_test)} digits test images")
    return (x_test[:batch].clone(),)
