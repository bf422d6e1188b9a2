"""Calibration data: sources, bounded size, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsec.calibration import CalibrationData, save_npz
from sparsec.errors import InputError, SparsecError


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
    with pytest.raises(InputError, match="shape \\[31\\] per sample"):
        CalibrationData({"x": np.zeros((4, 31), np.float32)}).check_against(mlp)


def test_unequal_sample_counts_rejected() -> None:
    with pytest.raises(SparsecError, match="same number of samples"):
        CalibrationData({"a": np.zeros((4, 2)), "b": np.zeros((5, 2))})
