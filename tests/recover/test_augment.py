"""Augmented distillation inputs: what changes, what never does."""

from __future__ import annotations

import numpy as np

from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.augment import AUGMENTED_SHARE, TOKEN_RATE, Augmenter, vocab_sizes
from sparsec.recover.finetune import FinetuneOptions, finetune

from .conftest import token_feeds


def test_tokens_are_replaced_inside_real_rows_only_from_the_samples_vocabulary():
    feeds = token_feeds(400, seed=3)
    feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    aug = Augmenter(feeds, "attention_mask", seed=0)
    assert set(aug.tokens) == {"input_ids"}  # type ids (two values at most) and the mask stay
    out = aug(feeds)
    ids, new, mask = feeds["input_ids"], out["input_ids"], feeds["attention_mask"] != 0
    np.testing.assert_array_equal(out["attention_mask"], feeds["attention_mask"])
    np.testing.assert_array_equal(out["token_type_ids"], feeds["token_type_ids"])
    changed = new != ids
    assert not changed[~mask].any()  # padding untouched
    rows = np.arange(len(ids))
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    assert not changed[rows, 0].any() and not changed[rows, last].any()  # first and last real tokens kept
    assert set(np.unique(new[changed])) <= set(np.unique(ids[mask]))
    inner = mask.sum() - 2 * len(ids)
    rate = changed.sum() / inner
    expected = TOKEN_RATE * AUGMENTED_SHARE * (1 - 1 / 100)  # a draw may repeat the token it replaces
    assert 0.6 * expected < rate < 1.4 * expected, rate
    assert not np.array_equal(aug(feeds)["input_ids"], new)  # a new draw every call


def test_float_inputs_are_mixed_within_the_batch():
    x = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    aug = Augmenter({"x": x}, None, seed=1)
    out = aug({"x": x})["x"]
    assert out.dtype == np.float32 and out.shape == x.shape
    moved = np.abs(out - x).max(axis=1) > 1e-6
    assert 0.2 < moved.mean() < 0.8
    assert (out.min(axis=1) >= x.min() - 1e-5).all() and (out.max(axis=1) <= x.max() + 1e-5).all()


def test_finetuning_on_augmented_inputs_keeps_masks_and_helps(mlp, mlp_calib):  # noqa: ANN001
    sparse = mlp.clone()
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1}"), verify_numerics=False).run(sparse, PassContext())
    zeros = {n: v.const_value.numpy() == 0 for n, v in sparse.graph.initializers.items() if n.startswith("w")}
    before = mean_cosine(run_outputs(mlp, mlp_calib), run_outputs(sparse, mlp_calib))
    result = finetune(sparse, mlp, mlp_calib, FinetuneOptions(steps=60, lr=3e-3, eval_every=20, progress=False, augment=True))
    assert result.steps_run > 0 and result.cosine_after > result.cosine_before
    for name, zero in zeros.items():
        assert (sparse.graph.initializers[name].const_value.numpy()[zero] == 0).all()
    assert mean_cosine(run_outputs(mlp, mlp_calib), run_outputs(sparse, mlp_calib)) > before


def test_splice_builds_new_rows_from_bigrams_the_samples_hold():
    feeds = token_feeds(200, seed=5)
    ids, mask = feeds["input_ids"], feeds["attention_mask"] != 0
    bigrams = {(int(a), int(b)) for row, m in zip(ids, mask, strict=True) for a, b in zip(row[m][1:-2], row[m][2:-1], strict=True)}
    aug = Augmenter(feeds, "attention_mask", seed=0, mode="splice")
    out = aug(feeds)
    new = out["input_ids"]
    np.testing.assert_array_equal(out["attention_mask"], feeds["attention_mask"])
    assert (new[~mask] == ids[~mask]).all()  # padding untouched
    rows = np.arange(len(ids))
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    assert (new[rows, 0] == ids[rows, 0]).all() and (new[rows, last] == ids[rows, last]).all()
    changed = [r for r in range(len(ids)) if not np.array_equal(new[r], ids[r])]
    assert 0.3 * len(ids) < len(changed) < 0.7 * len(ids)  # AUGMENTED_SHARE of the rows
    seen = total = 0
    for r in changed:
        inner = new[r][mask[r]][1:-1]
        pairs = list(zip(inner[:-1].tolist(), inner[1:].tolist(), strict=True))
        total += len(pairs)
        seen += sum(p in bigrams for p in pairs)
    # Every pair inside a copied span or across a jump on a shared token is a real bigram; only
    # restarts after a dead end are not.
    assert seen / total > 0.9, seen / total


def test_unknown_augment_mode_is_refused():
    import pytest

    from sparsec.errors import OptionError

    with pytest.raises(OptionError, match="augment mode"):
        FinetuneOptions(augment=True, augment_mode="shuffle")


def test_blockwise_data_gets_the_changed_rows_of_augmented_copies():
    from sparsec.calib.data import CalibrationData
    from sparsec.recover.finetune import _with_augmented_copies

    feeds = token_feeds(200, seed=5)
    train = CalibrationData(feeds, batch_size=16, row_mask="attention_mask")
    data = _with_augmented_copies(train, FinetuneOptions(augment=True, augment_mode="splice", blockwise_copies=2), {})
    n = train.num_samples
    extra = data.num_samples - n
    assert 2 * n * AUGMENTED_SHARE * 0.7 < extra < 2 * n * AUGMENTED_SHARE * 1.3  # about half of each copy
    for k, v in feeds.items():
        np.testing.assert_array_equal(data.arrays[k][:n], v)  # the samples first, as they are
    added = data.arrays["input_ids"][n:]
    assert not any(any(np.array_equal(row, orig) for orig in feeds["input_ids"]) for row in added[:20])
    lengths = set((feeds["attention_mask"] != 0).sum(1).tolist())
    assert set((data.arrays["attention_mask"][n:] != 0).sum(1).tolist()) <= lengths  # masks are kept
    assert _with_augmented_copies(train, FinetuneOptions(augment=True, blockwise_copies=0), {}).num_samples == n


def test_vocab_mode_draws_tokens_the_samples_never_held_from_the_whole_table():
    feeds = token_feeds(400, seed=3)
    feeds["input_ids"] = feeds["input_ids"] % 20  # the samples use 20 of 1000 tokens
    mask = feeds["attention_mask"] != 0
    for mode in ("vocab", "splice-vocab"):
        out = Augmenter(feeds, "attention_mask", seed=0, mode=mode, vocab_sizes={"input_ids": 1000})(feeds)["input_ids"]
        changed = out != feeds["input_ids"]
        assert not changed[~mask].any()
        assert out.min() >= 0 and out.max() < 1000
        unseen = (out >= 20) & mask
        # vocab draws land outside the samples' 20 tokens 98% of the time; splice alone never does
        assert 0.5 * TOKEN_RATE * AUGMENTED_SHARE < unseen[mask].mean() < 1.5 * TOKEN_RATE * AUGMENTED_SHARE, mode
    # Without a table for the input, "vocab" falls back to the samples' own tokens.
    out = Augmenter(feeds, "attention_mask", seed=0, mode="vocab")(feeds)["input_ids"]
    assert out.max() < 20


def test_vocab_sizes_finds_the_embedding_table_of_real_exports(hf_models):  # noqa: ANN001
    for family in ("bert", "gpt2"):
        assert vocab_sizes(hf_models[family]) == {"input_ids": 100}, family
