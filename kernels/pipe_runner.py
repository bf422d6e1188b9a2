"""Drive a model-runner program over a pipe: kernels/tvm_arm/tvm_runner.cc (a TVM library) or
kernels/ort_arm/ort_runner.c (ONNX Runtime + the kernel op library), typically built for
aarch64 and run under qemu user emulation from x86 Python.

One process serves every call, so the model loads once (slow under emulation). Times it
reports are the program's own wall time per call; under qemu they are emulated time: a sanity
check, never a speed claim.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import cross_build

# numpy dtype <-> DLPack (type code, bits)
_DL = {np.dtype(np.float32): (2, 32), np.dtype(np.int64): (0, 64), np.dtype(np.int32): (0, 32),
       np.dtype(np.float16): (2, 16), np.dtype(np.uint8): (1, 8), np.dtype(np.bool_): (6, 8)}
_NP = {v: k for k, v in _DL.items()}


class PipeRunner:
    """A runner process (`argv`), under qemu when `emulated`; `lib_dirs` go to LD_LIBRARY_PATH."""

    def __init__(self, argv: Sequence[str], lib_dirs: Sequence[Path] = (), emulated: bool = True,
                 guest_env: dict[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        if emulated:
            self._proc = cross_build.popen_emulated(list(argv), lib_dirs=lib_dirs, guest_env=guest_env, **pipes)
        else:
            env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(map(str, lib_dirs)), **(guest_env or {}))
            self._proc = subprocess.Popen(list(argv), env=env, **pipes)

    def run(self, inputs: list[np.ndarray], repeat: int = 1) -> tuple[list[np.ndarray], float, float]:
        """(outputs, median ms, min ms) of `repeat` calls of the model on `inputs`."""
        request = [struct.pack("<2I", max(repeat, 1), len(inputs))]
        for a in inputs:
            a = np.ascontiguousarray(a)
            if a.dtype not in _DL:
                raise TypeError(f"input dtype {a.dtype} is not supported by the runner")
            code, bits = _DL[a.dtype]
            request += [struct.pack("<3i", code, bits, a.ndim), struct.pack(f"<{a.ndim}q", *a.shape), a.tobytes()]
        with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            try:
                self._proc.stdin.write(b"".join(request))
                self._proc.stdin.flush()
                (count,) = struct.unpack("<I", self._read(4))
                outputs = [self._read_tensor() for _ in range(count)]
                median, fastest = struct.unpack("<2d", self._read(16))
            except (BrokenPipeError, EOFError):
                raise RuntimeError(f"model runner failed: {self._error()}") from None
        return outputs, median, fastest

    def _read(self, n: int) -> bytes:
        assert self._proc.stdout is not None
        data = self._proc.stdout.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def _read_tensor(self) -> np.ndarray:
        code, bits, ndim = struct.unpack("<3i", self._read(12))
        shape = struct.unpack(f"<{ndim}q", self._read(8 * ndim))
        dtype = _NP.get((code, bits))
        if dtype is None:
            raise RuntimeError(f"aarch64 runner returned an unsupported dtype (code {code}, {bits} bits)")
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._read(count * dtype.itemsize), dtype=dtype).reshape(shape).copy()

    def _error(self) -> str:
        self.close()
        err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
        return err.splitlines()[-1] if err else f"exit status {self._proc.returncode}"

    def close(self) -> None:
        if self._proc.poll() is None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> PipeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


__all__ = ["PipeRunner"]
