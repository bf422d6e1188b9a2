"""Calibration data: sources, bounded size, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsec.calib.data import CalibrationData, model_batch_size, save_npz
from sparsec.calib.runner import run_outputs
from sparsec.errors import InputError, SparsecError
from sparsec.testing import make_model

from .conftest import MLP_TEXT, build_mlp


def test_npz_round_trip_and_batches(tmp_path: Path) -> None:
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    path = save_npz(tmp_path / "c.npz", {"x": x})
    data = CalibrationData.load(str(path), max_samples=25, batch_size=10)
    assert data.num_samples == 25
    assert [b["x"].shape[0] for b in data.batches()] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in data.batches()]), x[:25])


def test_iterable_is_bounded() -> None:
    def endless():  # noqa: ANN202
        i = 0
        while True:
            yield {"x": np.full((4, 2), i, dtype=np.float32)}
            i += 1

    data = CalibrationData.from_feeds(endless(), max_samples=10)
    assert data.num_samples == 10
    assert data.arrays["x"][-1, 0] == 2.0


def test_digest_depends_on_content() -> None:
    a = CalibrationData({"x": np.zeros((4, 2), np.float32)})
    b = CalibrationData({"x": np.ones((4, 2), np.float32)})
    assert a.digest() != b.digest()
    assert a.digest() == CalibrationData({"x": np.zeros((4, 2), np.float32)}).digest()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.npz", "no such file"),
        (lambda p: (p / "bad.npz").write_bytes(b"not a zip") and p / "bad.npz", "not a readable .npz"),
        (lambda p: (p / "data.txt").write_text("x") and p / "data.txt", "expected an .npz file"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=message) as e:
        CalibrationData.load(str(make(tmp_path)))
    assert "\n" not in str(e.value)


def test_mismatched_inputs_are_named(mlp) -> None:  # noqa: ANN001
    data = CalibrationData({"y": np.zeros((4, 32), np.float32)})
    with pytest.raises(InputError, match="missing: x; unexpected: y"):
        data.check_against(mlp)
    with pytest.raises(InputError, match=r"input 'x' has shape \[4, 31\] .*the model takes \[N, 32\]: each sample must be \[32\]"):
        CalibrationData({"x": np.zeros((4, 31), np.float32)}).check_against(mlp)


def test_unequal_sample_counts_rejected() -> None:
    with pytest.raises(SparsecError, match="same number of samples"):
        CalibrationData({"a": np.zeros((4, 2)), "b": np.zeros((5, 2))})


STATIC_MLP = MLP_TEXT.replace("float[N, 32] x", "float[BATCH, 32] x").replace("float[N, 16] y", "float[BATCH, 16] y")


def static_mlp(batch: int):  # noqa: ANN201
    """The test MLP exported with a fixed batch dimension (as most exports are)."""
    rng = np.random.default_rng(0)
    return make_model(
        STATIC_MLP.replace("BATCH", str(batch)),
        w1=(rng.standard_normal((32, 64)) / 6).astype(np.float32),
        w2=(rng.standard_normal((64, 64)) / 8).astype(np.float32),
        w3=(rng.standard_normal((64, 16)) / 8).astype(np.float32),
    )


def test_fixed_batch_models_are_fed_their_own_batch_size() -> None:
    x = np.random.default_rng(0).standard_normal((7, 32)).astype(np.float32)
    data = CalibrationData({"x": x}, batch_size=4)
    assert model_batch_size(static_mlp(1)) == 1 and model_batch_size(build_mlp()) is None
    assert [b["x"].shape[0] for b in data.batches_for(static_mlp(1))] == [1] * 7
    assert [b["x"].shape[0] for b in data.batches_for(static_mlp(3))] == [3, 3]  # the 7th sample cannot be fed
    assert [b["x"].shape[0] for b in data.batches_for(build_mlp())] == [4, 3]
    # The runner's outputs equal the dynamic-batch model's on the same samples.
    dense = run_outputs(build_mlp(), data)[0]
    np.testing.assert_allclose(run_outputs(static_mlp(1), data)[0], dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_outputs(static_mlp(3), data)[0], dense[:6], rtol=1e-5, atol=1e-6)


def test_data_batched_like_the_model_is_accepted_and_mismatches_name_both_shapes() -> None:
    x = np.random.default_rng(0).standard_normal((5, 1, 32)).astype(np.float32)
    data = CalibrationData({"x": x})
    data.check_against(static_mlp(1))  # [batches, 1, 32] for a model input [1, 32]: flattened
    assert data.num_samples == 5 and data.arrays["x"].shape == (5, 32)
    with pytest.raises(InputError, match=r"input 'x' has shape \[5, 2, 32\] .*the model takes \[1, 32\]") as e:
        CalibrationData({"x": np.zeros((5, 2, 32), np.float32)}).check_against(static_mlp(1))
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="holds 2 samples, the model takes batches of exactly 3"):
        next(CalibrationData({"x": np.zeros((2, 32), np.float32)}).batches_for(static_mlp(3)))
