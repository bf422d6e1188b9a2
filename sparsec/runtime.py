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
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from sparsec.errors import InputError

if TYPE_CHECKING:
    from sparsec.ir.session_model import SessionModel

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
    model_bytes: bytes | SessionModel,
    threads: int = 2,
    *,
    custom_ops: bool | None = None,
    kernel_threads: int | None = DEFAULT_KERNEL_THREADS,
    allow_spinning: bool | None = None,
    library: str | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; `custom_ops` (detected when None) enables sparsec kernels.

    `model_bytes` is a serialized model, or a `SessionModel` whose large weights are handed
    to ONNX Runtime in memory. `allow_spinning` (ORT's session.intra_op.allow_spinning): None
    keeps the defaults, off with kernels (spinning ORT workers steal the kernel pool's cores)
    and ORT's own (on) without. `library` is the kernel library to register (default: the
    installed one). Without it a model using the kernels raises KernelUnavailableError.
    """
    initializers = getattr(model_bytes, "initializers", {})
    data: bytes = getattr(model_bytes, "graph_bytes", model_bytes)
    if custom_ops is None:
        custom_ops = KERNEL_DOMAIN.encode() in data
    key = (data, tuple(initializers.values()), threads, custom_ops, kernel_threads, library, allow_spinning)
    if initializers and _last_session is not None and _same_key(_last_session[0], key):
        return _last_session[1]
    try:
        session = _new_session(data, initializers, threads, custom_ops, kernel_threads, library, allow_spinning)
    except Exception as exc:
        # ONNX Runtime drops initializers its graph does not need (a dead node's weight)
        # before it takes in-memory ones, and then refuses their names: put them back inline.
        if not initializers or "ReplaceInitializedTensor" not in str(exc):
            raise
        from sparsec.ir.session_model import inline_weights

        return _new_session(inline_weights(data, initializers), {}, threads, custom_ops, kernel_threads, library,
                            allow_spinning)
    if initializers:
        _remember(key, session)
    return session


# The last session made from in-memory weights, and what it was made from. A compile asks
# twice for the same model in a row: the dense model (pass-manager baseline, then fidelity)
# and the compiled one (check after the last changing pass, then fidelity); BERT-base: two
# of five sessions saved, 1-2 s. One slot: no more memory than the caller holds anyway.
_last_session: tuple[tuple, ort.InferenceSession] | None = None


def _same_key(a: tuple, b: tuple) -> bool:
    return (
        a[0] == b[0] and len(a[1]) == len(b[1]) and all(x is y for x, y in zip(a[1], b[1], strict=True)) and a[2:] == b[2:]
    )


def _remember(key: tuple, session: ort.InferenceSession) -> None:
    global _last_session
    _last_session = (key, session)


def _new_session(
    data: bytes,
    initializers: dict[str, Any],
    threads: int,
    custom_ops: bool,
    kernel_threads: int | None,
    library: str | None,
    allow_spinning: bool | None = None,
) -> ort.InferenceSession:
    if custom_ops:
        from sparsec.backends.ort.sparse_ops import make_session as make_kernel_session

        return make_kernel_session(
            data, threads=threads, kernel_threads=kernel_threads, allow_spinning=bool(allow_spinning),
            initializers=initializers, library=library,
        )
    opts = plain_session_options(threads, allow_spinning=True if allow_spinning is None else allow_spinning)
    keep = add_initializers(opts, initializers)
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        session._sparsec_weights = keep  # ONNX Runtime reads these arrays in place
        return session
    except Exception as exc:
        if _LEGACY_DOMAIN.encode() in data:
            raise InputError(
                "this model uses the sparse ops of an older sparsec (onnxruntime-extensions "
                f"domain {_LEGACY_DOMAIN}); compile it again"
            ) from exc
        raise


def plain_session_options(threads: int = 2, allow_spinning: bool = True) -> ort.SessionOptions:
    """Session options for a model without sparsec kernels (spinning: ORT's default, on)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


def add_initializers(options: ort.SessionOptions, initializers: dict[str, Any]) -> list[ort.OrtValue]:
    """Register in-memory weights (name -> contiguous numpy array) with `options`; returns the
    OrtValues, which must live as long as the session: ONNX Runtime uses their memory in place."""
    if not initializers:
        return []
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in initializers.values()]
    options.add_external_initializers(list(initializers), values)
    return values


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


def _external_data_session(path: Path, threads: int, runtime_ops: Any, kernel_threads: int | None) -> ort.InferenceSession:
    """A session for a model whose weights sit in `<model>.data`: read through the IR and handed
    to ORT in place (sparsec.ir.session), so ORT never needs the model's folder."""
    from sparsec.dialect.reference import lower_to_reference
    from sparsec.ir.io import load_model
    from sparsec.ir.session import session_from_ir

    model = load_model(path, check_ops=False)
    lower_to_reference(model)
    custom = bool(runtime_ops) if runtime_ops is not None else None
    return session_from_ir(model, threads, custom_ops=custom, kernel_threads=kernel_threads)


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
        # The settings the compile measured fastest for this artifact (absent: the defaults).
        spinning = self.manifest.get("runtime_settings", {}).get("allow_spinning")
        # The artifact's own op library when it ships one (checked against the manifest).
        self.library: str | None = None
        if "kernel_library" in self.manifest:
            from sparsec.backends.ort.op_library import artifact_library

            self.library = artifact_library(model_path.parent, self.manifest)
        if model_path.with_name(model_path.name + ".data").is_file():  # weights in an external-data file
            self._session = _external_data_session(model_path, threads, runtime_ops, kernel_threads)
            return
        self._session = make_session(
            _without_dialect_ops(model_path.read_bytes(), str(model_path)),
            threads,
            custom_ops=bool(runtime_ops) if runtime_ops is not None else None,
            kernel_threads=kernel_threads,
            allow_spinning=None if spinning is None else bool(spinning),
            library=self.library,
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
