"""Run a TVM artifact: model.so (Relax VM executable + linked sparse kernels) and its weights.

    session = TvmSession("out/")          # or sparsec.runtime.load("out/")
    outputs = session.run({"input": x})   # list of numpy arrays, in the model's output order

Needs only `apache-tvm` (its runtime) and numpy: the sparse kernels live inside model.so.
"""

from __future__ import annotations

import json
import tempfile
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

    def _tensor(self, spec: dict[str, Any], feeds: dict[str, Any]) -> Any:
        import tvm

        name = spec["name"]
        if name not in feeds:
            raise InputError(f"missing input '{name}' (the model takes {', '.join(i['name'] for i in self.inputs)})")
        arr = np.ascontiguousarray(feeds[name])
        if str(arr.dtype) != spec["dtype"] or list(arr.shape) != spec["shape"]:
            raise InputError(f"input '{name}': got {arr.dtype}{list(arr.shape)}, the model takes {spec['dtype']}{spec['shape']}")
        return tvm.runtime.tensor(arr, self._dev)

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        extra = sorted(set(feeds) - {i["name"] for i in self.inputs})
        if extra:
            raise InputError(f"unknown input '{extra[0]}' (the model takes {', '.join(i['name'] for i in self.inputs)})")
        args = [self._tensor(spec, feeds) for spec in self.inputs]
        out = self._main(*args, *self._params)
        items = list(out) if not hasattr(out, "numpy") else [out]
        return [np.asarray(t.numpy()) for t in items]
