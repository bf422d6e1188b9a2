"""The external-data writer: page-aligned tensors, exact file length, and the same bytes where
O_DIRECT is refused at open or at the first write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import sparsec.ir.weights_file as wf
from sparsec.ir.weights_file import ALIGN, WeightsFile

SIZES = [10, 5000, 70_000, 1, 4096 // 4]


def _write(path: Path) -> tuple[list[np.ndarray], list[int], bool]:
    arrays = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate(SIZES)]
    with WeightsFile(path) as f:
        offsets = [f.append(memoryview(a.view(np.uint8))) for a in arrays]
        direct = f._fd is not None
    return arrays, offsets, direct


def _check(path: Path, arrays: list[np.ndarray], offsets: list[int]) -> None:
    data = path.read_bytes()
    assert all(o % ALIGN == 0 for o in offsets)
    assert len(data) == offsets[-1] + arrays[-1].nbytes  # cut to the true length, no padded tail
    for a, o in zip(arrays, offsets, strict=True):
        np.testing.assert_array_equal(np.frombuffer(data, np.float32, a.size, o), a)
    for a, o, nxt in zip(arrays, offsets, offsets[1:], strict=False):
        assert not any(data[o + a.nbytes : nxt])  # gaps are zeros: deterministic files


def test_tensors_cross_the_staging_buffer_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wf, "_STAGE", 3 * ALIGN)  # every tensor but the smallest spans flushes
    arrays, offsets, _ = _write(tmp_path / "w.data")
    _check(tmp_path / "w.data", arrays, offsets)


def test_refused_at_open_writes_the_same_bytes_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_direct(path, flags, *args):  # noqa: ANN001, ANN202
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    arrays, offsets, direct = _write(tmp_path / "w.data")
    assert not direct
    _check(tmp_path / "w.data", arrays, offsets)


def test_refused_at_the_first_write_writes_the_same_bytes_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wf, "_STAGE", 3 * ALIGN)
    real_write = os.write
    calls = {"n": 0}

    def refuse_first(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EINVAL, "unaligned for this file system")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_first)
    arrays, offsets, _ = _write(tmp_path / "w.data")
    assert calls["n"] == 1 or not hasattr(os, "O_DIRECT")
    _check(tmp_path / "w.data", arrays, offsets)
