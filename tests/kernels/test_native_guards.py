"""The C entry points reject malformed buffers themselves (defence in depth: a packed
object built around the Python validation must still never be read out of bounds), and a
missing library is a one-line KernelUnavailableError, never a crash."""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest

from sparsec import kernels as sk
from sparsec.kernels import _native


@pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")
def test_c_rejects_bad_lengths_and_indices(rng: np.random.Generator) -> None:
    w = sk.prune_nm(rng.standard_normal((16, 20)), 2, 4)
    good = sk.pack_nm(w, 2, 4)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    short = dataclasses.replace(good, values=good.values[:-16])  # bypasses from_arrays
    with pytest.raises(sk.PackedFormatError, match="length"):
        sk.nm_matmul(x, short)
    blocks = sk.pack_block(sk.prune_block(w, 0.5, 4), 4)
    kidx = blocks.kidx.copy()
    kidx[-1] = 15  # rows 15..18 of a K=16 weight
    with pytest.raises(sk.PackedFormatError, match="out of range"):
        sk.block_matmul(x, dataclasses.replace(blocks, kidx=kidx))


def test_missing_library_raises_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "_candidates", lambda: [])
    _native.load.cache_clear()
    try:
        with pytest.raises(sk.KernelUnavailableError) as info:
            sk.nm_matmul(np.ones((1, 4), np.float32), sk.pack_nm(np.zeros((4, 2)), 1, 4))
        assert "\n" not in str(info.value)
        assert not sk.kernels_available()
        # packing needs no compiled code
        assert sk.pack_nm(np.zeros((4, 2)), 1, 4).k == 4
    finally:
        _native.load.cache_clear()


def test_unloadable_library_raises(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    bogus = tmp_path / "_sparsec_kernels.so"
    bogus.write_bytes(b"not an ELF file")
    monkeypatch.setattr(_native, "_candidates", lambda: [str(bogus)])
    _native.load.cache_clear()
    try:
        with pytest.raises(sk.KernelUnavailableError, match="failed to load"):
            _native.load()
    finally:
        _native.load.cache_clear()
    assert isinstance(ctypes.CDLL, type)
