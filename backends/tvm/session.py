"""Run a TVM artifact: model.so (Relax VM executable + linked sparse kernels) and its weights.

    session = TvmSession("out/")          # or sparsec.runtime.load("out/")
    outputs = session.run({"input": x})   # list of numpy arrays, in the model's output order

Needs only `apache-tvm` (its runtime) and numpy: the sparse kernels live inside model.so.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from sparsec.errors import InputError

LIBRARY = "model.so"
PARAMS = "params.bin"
SIGNATURE = "tvm_signature.json"


def _set_threads(threads: int) -> None:
    import tvm

    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None and threads > 0:
        config(1, threads)  # 1: big cores (all cores here), `threads` workers


class TvmSession:
    def __init__(self, artifact: str | Path | dict[str, bytes], threads: int = 2) -> None:
        try:
            import tvm
            from tvm import relax
        except ImportError:
            raise InputError("this artifact was compiled for TVM: install sparsec[tvm] (apache-tvm) to run it") from None
        files = artifact if isinstance(artifact, dict) else None
        folder = None if files is not None else Path(artifact)
        read = (lambda name: files[name]) if files is not None else (lambda name: (folder / name).read_bytes())  # type: ignore[operator]
        try:
            signature = json.loads(read(SIGNATURE))
            params_blob = read(PARAMS)
            if folder is not None:
                lib_path = str(folder / LIBRARY)
                if not Path(lib_path).is_file():
                    raise FileNotFoundError(lib_path)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="sparsec-tvm-")
                lib_path = str(Path(self._tmp.name) / LIBRARY)
                Path(lib_path).write_bytes(read(LIBRARY))
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{artifact if folder else 'artifact'}: incomplete TVM artifact ({e})") from None
        self.inputs: list[dict[str, Any]] = signature["inputs"]
        self.outputs: list[str] = signature["outputs"]
        _set_threads(threads)
        self._dev = tvm.cpu()
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(lib_path), self._dev)
        loaded = tvm.runtime.load_param_dict(params_blob)
        self._params = [loaded[f"p{i}"] for i in range(len(loaded))]
        self._main = self._vm["main"]
        # Inputs are copied into buffers allocated once by TVM (aligned as its code assumes):
        # allocating a tensor per call cost more than a small kernel call (~25 us). The lock
        # keeps concurrent run() calls from sharing them.
        self._in_tvm = [tvm.runtime.empty(tuple(i["shape"]), i["dtype"], self._dev) for i in self.inputs]
        self._in_np = [np.from_dlpack(t) for t in self._in_tvm]
        self._names = [i["name"] for i in self.inputs]
        self._lock = threading.Lock()
        # Buffers an output may alias (a graph output that is an input or a weight): such
        # outputs are copied, since the next call (or the caller) would change them.
        self._owned = {a.ctypes.data for a in self._in_np} | {np.from_dlpack(p).ctypes.data for p in self._params if p.shape}

    def _bad_feeds(self, feeds: dict[str, Any]) -> str | None:
        """The one-line complaint about `feeds`, or None when they fit the signature."""
        for spec in self.inputs:
            name = spec["name"]
            if name not in feeds:
                return f"missing input '{name}' (the model takes {', '.join(self._names)})"
            arr = np.asarray(feeds[name])
            if str(arr.dtype) != spec["dtype"] or list(arr.shape) != spec["shape"]:
                return f"input '{name}': got {arr.dtype}{list(arr.shape)}, the model takes {spec['dtype']}{spec['shape']}"
        extra = sorted(set(feeds) - set(self._names))
        return f"unknown input '{extra[0]}' (the model takes {', '.join(self._names)})" if extra else None

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        problem = self._bad_feeds(feeds)
        if problem:
            raise InputError(problem)
        with self._lock:
            for name, buf in zip(self._names, self._in_np, strict=True):
                np.copyto(buf, feeds[name])
            out = self._main(*self._in_tvm, *self._params)
        items = list(out) if not hasattr(out, "shape") else [out]
        # Zero-copy: an output is a tensor the VM allocated for this call (Relax does not
        # plan function outputs into reused storage), and the numpy array keeps it alive.
        arrays = [np.from_dlpack(t) for t in items]
        return [a.copy() if a.size and a.ctypes.data in self._owned else a for a in arrays]
