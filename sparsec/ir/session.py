"""ONNX Runtime sessions straight from the IR, without serializing the weights.

Serializing a model to bytes for `InferenceSession` copies every weight into the proto (and
protobuf refuses more than 2 GB); ORT then copies them again. Here every initializer above
`INLINE_BYTES` is written into the proto as a placeholder external reference and handed to
ORT with `add_external_initializers` as an `OrtValue` over the weight's array. ORT 1.32
copies them into its own buffers (measured: zeroing the arrays after the session is made
leaves its results unchanged), so the arrays are dropped once the session exists: a
session costs the weights once, plus one weight array at a time while it is built from
`FileTensor`s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

INLINE_BYTES = 1024  # smaller initializers stay in the proto
_PLACEHOLDER = "__sparsec_external_initializer__"


def proto_with_external_weights(
    model: ir.Model, inline_bytes: int = INLINE_BYTES, *, read: bool = True
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(the model's proto with large initializers as placeholders, name -> their arrays;
    none are read when not `read`)."""
    arrays: dict[str, np.ndarray] = {}
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.dtype.bitwidth < 8:
                continue
            if tensor.nbytes <= inline_bytes and not isinstance(tensor, ir.ExternalTensor):
                continue  # small, in memory: inline (an external one is read and handed over)
            if read:
                arrays[value.name] = np.ascontiguousarray(tensor.numpy())
            placeholder = ir.ExternalTensor(
                _PLACEHOLDER, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=value.name
            )
            swapped.append((value, tensor))
            value.const_value = placeholder
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    return proto, arrays


def options_with_weights(opts: ort.SessionOptions, arrays: dict[str, np.ndarray]) -> list[Any]:
    """Hand `arrays` to ORT by reference; the returned OrtValues must outlive the session."""
    if not arrays:
        return []
    names = list(arrays)
    values = [ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names]
    opts.add_external_initializers(names, values)
    return values


def session_from_ir(
    model: ir.Model, threads: int = 2, *, custom_ops: bool | None = None, lean: bool = False,
    kernel_threads: int | None = None, allow_spinning: bool | None = None, retry: bool = True,
) -> ort.InferenceSession:
    """A CPU session for `model` (custom sparsec kernels registered when it uses them).

    `lean`: no MatMul weight pre-packing (ORT would keep a packed copy of every weight next
    to the original); for runs whose memory matters more than their speed. `allow_spinning`:
    ORT's session.intra_op.allow_spinning (None: off with custom ops, ORT's default without).
    """
    from sparsec.runtime import KERNEL_DOMAIN

    if custom_ops is None:
        custom_ops = any(n.domain == KERNEL_DOMAIN for n in model.graph)
    proto, arrays = proto_with_external_weights(model)
    if custom_ops:
        from sparsec.backends.ort.sparse_ops import session_options

        opts = session_options(threads, kernel_threads, bool(allow_spinning))
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if allow_spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if lean:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    keep = options_with_weights(opts, arrays)
    data = proto.SerializeToString()
    del proto
    try:
        session = _session(data, opts, custom_ops, threads, kernel_threads)
    except Exception as exc:
        # ORT drops initializers no node needs (a dead branch's weight) before it takes the
        # in-memory ones, then refuses their names: such a model goes in with inline weights.
        if not retry or not arrays or "ReplaceInitializedTensor" not in str(exc):
            raise
        del keep
        return session_from_ir(_without_external(model), threads, custom_ops=custom_ops, lean=lean,
                               kernel_threads=kernel_threads, allow_spinning=allow_spinning, retry=False)
    del keep, arrays  # ORT holds its own copy (see the module docstring)
    return session


def _session(data: bytes, opts: ort.SessionOptions, custom_ops: bool, threads: int, kernel_threads: int | None
             ) -> ort.InferenceSession:
    if custom_ops:
        from sparsec.backends.ort.sparse_ops import make_session

        return make_session(data, threads=threads, kernel_threads=kernel_threads, options=opts)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _without_external(model: ir.Model) -> ir.Model:
    """A copy of `model` without the initializers no node reads (ORT would drop them)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    copy = model.clone()
    RemoveUnusedNodesPass()(copy)
    used = {v.name for n in copy.graph for v in n.inputs if v is not None} | {v.name for v in copy.graph.outputs}
    for name in [n for n in copy.graph.initializers if n not in used]:
        copy.graph.initializers.pop(name)
    return copy


__all__ = ["proto_with_external_weights", "session_from_ir"]
