"""Fuzz cases for `.npz` calibration files (what `--calib` reads).

A case writes an .npz for the tiny MLP (input x [N, 64] float32) and then gets it wrong:
dtypes (float64, ints, bool, complex, strings, structured, object arrays that need
pickle), ranks and per-sample shapes, no samples, NaN/Inf, missing and extra inputs,
arrays that disagree in sample count, zip-level damage, a member that is not .npy, and
headers that declare huge shapes. It then goes through the public loader, the check against
the model, and for a sample a data-driven pass (wanda) run on it.
"""

from __future__ import annotations

import io
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .fuzz_property import Outcome, check_api
from .gen_models import tiny_mlp


def _calibration_data():  # the public entry point, wherever the calibration layer lives
    from sparsec.calib.data import CalibrationData
    return CalibrationData


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _huge_header(rng: random.Random) -> bytes:
    """An .npy whose header declares a huge shape over a few bytes of data."""
    shape = rng.choice(((2**40, 64), (2**31, 2**31), (10**6, 64), (16, 2**40), (-1, 64)))
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + repr(shape) + ", }"
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(256)


def write_case(seed: int, path: Path) -> None:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    samples = rng.choice((1, 2, 8, 33))
    arrays: dict[str, object] = {"x": nrng.standard_normal((samples, 64)).astype(np.float32)}
    for _ in range(rng.choice((0, 1, 1, 2))):
        r = rng.random()
        x = arrays.get("x", np.zeros((1, 64), np.float32))
        if r < 0.25:
            dt = rng.choice((np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64, "U3", "S2", "datetime64[s]"))
            try:
                arrays["x"] = np.asarray(x).astype(dt)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                arrays["x"] = np.zeros((samples, 64), np.float64)
        elif r < 0.35:
            arrays["x"] = np.array([object(), 1], dtype=object) if rng.random() < 0.5 else np.zeros((2, 64), dtype=[("a", "<f4")])
        elif r < 0.5:
            arrays["x"] = nrng.standard_normal(rng.choice(((64,), (samples, 64, 1), (samples, 63), (samples, 65), (), (samples, 8, 8)))).astype(np.float32)
        elif r < 0.6:
            arrays["x"] = np.zeros(rng.choice(((0, 64), (0,), (samples, 0))), np.float32)
        elif r < 0.72:
            a = np.zeros((samples, 64), np.float32) if np.asarray(x).dtype.kind not in "fiub" else np.array(x, dtype=np.float32, copy=True)
            if a.size:
                a.reshape(-1)[rng.randrange(a.size)] = rng.choice((np.nan, np.inf, -np.inf))
            arrays["x"] = a
        elif r < 0.8:
            arrays.pop("x", None)
        elif r < 0.9:
            arrays[rng.choice(("y", "X", "x ", "", "../x", "attention_mask"))] = nrng.standard_normal((rng.choice((samples, samples + 1)), 64)).astype(np.float32)
        else:
            arrays["x"] = nrng.standard_normal((samples, 64)).astype(np.float32) * 1e38
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, arr in arrays.items():
            z.writestr(name + ".npy", _npy_bytes(np.asarray(arr)))
        r = rng.random()
        if r < 0.05:
            z.writestr("x.npy" if "x" not in arrays else "huge.npy", _huge_header(rng))
        elif r < 0.08:
            z.writestr("notes.txt", b"hello")
        elif r < 0.1:
            z.writestr(rng.choice(("x.npy", "z.npy")), b"\x93NUMPY\x01\x00garbage")
    data = buf.getvalue()
    r = rng.random()
    if r < 0.05 and data:
        data = data[: rng.randrange(len(data))]
    elif r < 0.1 and data:
        b = bytearray(data)
        for _ in range(rng.choice((1, 4, 16))):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        data = bytes(b)
    elif r < 0.12:
        data = rng.randbytes(rng.choice((0, 10, 1000)))
    path.write_bytes(data)


def use_npz(path: Path, seed: int) -> None:
    from sparsec.passes.sparsify.nm_sparsity import NMSparsity
    from sparsec.pm.context import PassContext
    from sparsec.pm.manager import PassManager

    model = tiny_mlp()
    data = _calibration_data().load(str(path))
    data.check_against(model)
    if seed % 5 == 0:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = PassContext(calibration=data, repro_dir=Path(tmp) / "r")
            PassManager([NMSparsity(criterion="wanda", min_params=0)]).run(model, ctx)


def npz_case(seed: int) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calib.npz"
        write_case(seed, path)
        return check_api(lambda: use_npz(path, seed))
