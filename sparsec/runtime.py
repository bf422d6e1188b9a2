"""The sparsec runtime: load and run compiled artifacts, custom kernels included.

    session = sparsec.runtime.InferenceSession("out/")
    outputs = session.run(None, {"input": x})

An artifact whose manifest lists `runtime_ops` needs this loader: it registers the sparsec
kernel library (native ONNX Runtime custom ops in the domain `com.sparsec.kernels`) with the
session; other artifacts are plain ONNX and load anywhere. A model written by `sparsec opt`
still holds `com.sparsec` ops (the pruning decisions); this loader runs them through their
reference lowering to standard ONNX (`sparsec.dialect.reference`), so every file sparsec
writes, sparsec can run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort

from sparsec.errors import InputError

# ONNX domain of the sparsec kernel custom ops (kernels/src/sk_ort_ops.c).
KERNEL_DOMAIN = "com.sparsec.kernels"
# Domain of the Python custom ops (onnxruntime-extensions) that artifacts used before.
_LEGACY_DOMAIN = "ai.onnx.contrib"
# Domain of the sparsec dialect ops (sparsec.dialect.DOMAIN; not imported here to keep this light).
_DIALECT_DOMAIN = "com.sparsec"


# Threads per sparse-kernel call; None = as many as ONNX Runtime's intra-op pool. The kernel
# pool spins ~60 us after a call, so back-to-back layers reuse awake workers: GPT-2-small decode
# step (73 kernel calls, ORT on 2 threads) 1.53-1.57x over dense with 2 kernel threads vs
# 1.37-1.44x with 1 (bench/results/kernel_threads_gpt_step.json).
DEFAULT_KERNEL_THREADS: int | None = None


def make_session(
    model_bytes: bytes,
    threads: int = 2,
    *,
    custom_ops: bool | None = None,
    kernel_threads: int | None = DEFAULT_KERNEL_THREADS,
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; `custom_ops` (detected when None) enables sparsec kernels.

    Without the compiled kernel library a model using them raises KernelUnavailableError.
    """
    if custom_ops is None:
        custom_ops = KERNEL_DOMAIN.encode() in model_bytes
    if custom_ops:
        from sparsec.backends.ort.sparse_ops import make_session as make_kernel_session

        return make_kernel_session(model_bytes, threads=threads, kernel_threads=kernel_threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if _LEGACY_DOMAIN.encode() in model_bytes:
            raise InputError(
                "this model uses the sparse ops of an older sparsec (onnxruntime-extensions "
                f"domain {_LEGACY_DOMAIN}); compile it again"
            ) from exc
        raise


def _without_dialect_ops(data: bytes, origin: str) -> bytes:
    """`data` with every `com.sparsec` op replaced by its reference lowering (standard ONNX)."""
    if data.count(_DIALECT_DOMAIN.encode()) == data.count(KERNEL_DOMAIN.encode()):
        return data  # no dialect op (the common case), decided without parsing the model
    import onnx

    from sparsec.dialect.reference import lower_to_reference
    from sparsec.ir.io import model_from_proto, to_proto

    model = model_from_proto(onnx.load_from_string(data), origin=origin)
    if not lower_to_reference(model):
        return data
    return to_proto(model).SerializeToString()


class InferenceSession:
    """Runs an artifact folder (or a model file) written by `sparsec compile`."""

    def __init__(
        self, artifact: str | Path, threads: int = 2, kernel_threads: int | None = DEFAULT_KERNEL_THREADS
    ) -> None:
        path = Path(artifact)
        model_path = path / "model.onnx" if path.is_dir() else path
        if not model_path.is_file():
            raise InputError(f"{artifact}: no sparsec artifact (model.onnx) found")
        manifest_path = model_path.parent / "manifest.json"
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        runtime_ops = self.manifest.get("runtime_ops")
        self._session = make_session(
            _without_dialect_ops(model_path.read_bytes(), str(model_path)),
            threads,
            custom_ops=bool(runtime_ops) if runtime_ops is not None else None,
            kernel_threads=kernel_threads,
        )

    def get_inputs(self) -> list:
        return self._session.get_inputs()

    def get_outputs(self) -> list:
        return self._session.get_outputs()

    def run(self, output_names: list[str] | None, feeds: dict[str, Any]) -> list:
        return self._session.run(output_names, feeds)


class _OrtArtifact:
    """An ONNX Runtime artifact behind the backend-neutral `run(feeds)` of `load`."""

    def __init__(self, artifact: str | Path, threads: int) -> None:
        self.session = InferenceSession(artifact, threads)
        self.manifest = self.session.manifest

    def run(self, feeds: dict[str, Any]) -> list:
        return self.session.run(None, feeds)


def load(artifact: str | Path, threads: int = 2) -> Any:
    """An artifact folder ready to run: `load("out/").run({"input": x})` -> list of outputs.

    The manifest's `backend` picks the runtime: ONNX Runtime (model.onnx, sparsec custom ops)
    or TVM (model.so with the kernels linked in, params.bin; needs `sparsec[tvm]`).
    """
    path = Path(artifact)
    manifest_path = path / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("backend") == "tvm":
        from sparsec.backends.tvm.session import TvmSession

        session = TvmSession(path, threads)
        session.manifest = manifest  # type: ignore[attr-defined]
        return session
    return _OrtArtifact(path, threads)
