"""Numeric evaluation of IR models with ONNX Runtime on sample inputs (metrics: `sparsec.calib.metrics`).

Any IR (including `com.sparsec` ops) is evaluated through its reference lowering, so every
pass can be checked against the model it started from.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from sparsec.dialect import DOMAIN
from sparsec.dialect.reference import lower_to_reference
from sparsec.errors import InputError
from sparsec.ir.io import inline_copy, to_proto
from sparsec.ir.session_model import SessionModel, session_model

DEFAULT_DIM = 1  # value for a symbolic batch dim
DEFAULT_SEQ = 16  # value for other symbolic dims (sequence lengths)
NUMERICS_THREADS = 2  # ONNX Runtime threads of `evaluate` (the pass manager's checks)
# Sample inputs beyond 1 GiB of float32 would exhaust memory before any error is seen.
MAX_SAMPLE_ELEMENTS = 1 << 28


def concrete_shape(value: ir.Value, dims: dict[str, int]) -> list[int]:
    shape = []
    for i, d in enumerate(value.shape or ()):
        if isinstance(d, int):
            shape.append(d)
        else:
            name = d.value or ""
            shape.append(dims.get(name, DEFAULT_DIM if i == 0 else DEFAULT_SEQ))
    return shape


def _int_input_high(model: ir.Model, value: ir.Value) -> int:
    """Upper bound for token-id style inputs: the smallest table they index, else 2."""
    highs = []
    for node, index in value.uses():
        if node.op_type == "Gather" and index == 1:
            table = node.inputs[0]
            if table is not None and table.shape is not None and isinstance(table.shape[0], int):
                highs.append(table.shape[0])
    return min(highs) if highs else 2


def sample_inputs(
    model: ir.Model, *, dims: dict[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic random inputs for every graph input (not initializers)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        shape = concrete_shape(value, dims or {})
        if min(shape, default=0) < 0 or math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise InputError(
                f"input '{value.name}' has shape {shape}: no sample input of that shape "
                f"(negative, or more than {MAX_SAMPLE_ELEMENTS} elements)"
            )
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        if np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, _int_input_high(model, value), size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(size=shape) < 0.5
        else:
            feeds[value.name] = rng.standard_normal(size=shape).astype(dtype)
    return feeds


def reference_bytes(model: ir.Model) -> bytes:
    """Serialized standard-ONNX form of `model` (com.sparsec ops lowered to their reference)."""
    copy = inline_copy(model)
    lower_to_reference(copy)
    return to_proto(copy).SerializeToString()


def reference_model(model: ir.Model) -> SessionModel:
    """The standard-ONNX form of `model` as ONNX Runtime takes it, weights in memory."""
    if not uses_dialect(model):
        return session_model(model)  # already standard ONNX: no copy to lower
    copy = model.clone()
    lower_to_reference(copy)
    return session_model(copy)


def make_session(model: bytes | SessionModel, threads: int = 2) -> ort.InferenceSession:
    from sparsec.runtime import make_session as runtime_session

    return runtime_session(model, threads)


def evaluate(model: ir.Model, feeds: dict[str, np.ndarray], threads: int = NUMERICS_THREADS) -> list[np.ndarray]:
    """Outputs of `model` (reference-lowered) on `feeds`; stage by stage when its weights
    exceed the memory budget (`sparsec.memory`), else in one session sharing its weights."""
    return evaluate_batches(model, [feeds], threads)[0]


def evaluate_batches(
    model: ir.Model, batches: list[dict[str, np.ndarray]], threads: int = NUMERICS_THREADS
) -> list[list[np.ndarray]]:
    """`evaluate` on each of `batches` (each its own `session.run`), the sessions built once."""
    from sparsec.calib.staged import StagedModel
    from sparsec.ir.file_tensor import weight_bytes
    from sparsec.ir.session import session_from_ir
    from sparsec.memory import current_budget, lean_stage_bytes

    copy = model.clone()  # shares the weights; the lowering below leaves `model` alone
    lower_to_reference(copy)
    stage_bytes = lean_stage_bytes(current_budget(), weight_bytes(copy))
    if stage_bytes is not None:
        return list(StagedModel(copy, stage_bytes, threads).run(batches))
    session = session_from_ir(copy, threads, lean=True)
    return [session.run(None, feeds) for feeds in batches]


def uses_dialect(model: ir.Model) -> bool:
    """Whether `model` has `com.sparsec` ops (which `evaluate` runs through their reference)."""
    return DOMAIN in model.opset_imports or any(node.domain == DOMAIN for node in model.graph)
