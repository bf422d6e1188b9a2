"""Numeric evaluation of IR models with ONNX Runtime, and fidelity metrics.

Any IR (including `com.sparsec` ops) is evaluated through its reference lowering, so every
pass can be checked against the model it started from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from sparsec.dialect.reference import lower_to_reference
from sparsec.errors import InputError
from sparsec.ir.io import inline_copy, to_proto

DEFAULT_DIM = 1  # value for a symbolic batch dim
DEFAULT_SEQ = 16  # value for other symbolic dims (sequence lengths)
# Sample inputs beyond 1 GiB of float32 would exhaust memory before any error is seen.
MAX_SAMPLE_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Fidelity:
    """How close one model's outputs are to another's on the same inputs."""

    cosine: float  # worst cosine similarity over outputs (flattened per sample)
    max_abs: float  # largest absolute difference
    rel_l2: float  # ||a - b|| / ||a||, worst over outputs

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


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


def make_session(model_bytes: bytes, threads: int = 2) -> ort.InferenceSession:
    from sparsec.runtime import make_session as runtime_session

    return runtime_session(model_bytes, threads)


def evaluate(model: ir.Model, feeds: dict[str, np.ndarray], threads: int = 2) -> list[np.ndarray]:
    session = make_session(reference_bytes(model), threads)
    return session.run(None, feeds)


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> Fidelity:
    cos, max_abs, rel = 1.0, 0.0, 0.0
    for a, b in zip(reference, candidate, strict=True):
        if np.size(a) == 0 and np.size(b) == 0:  # an empty output agrees with itself
            continue
        a64 = np.asarray(a, dtype=np.float64).reshape(len(a) if np.ndim(a) else 1, -1)
        b64 = np.asarray(b, dtype=np.float64).reshape(a64.shape)
        num = np.sum(a64 * b64, axis=1)
        den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
        per_row = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
        cos = min(cos, float(per_row.min()))
        max_abs = max(max_abs, float(np.max(np.abs(a64 - b64))) if a64.size else 0.0)
        norm = float(np.linalg.norm(a64))
        rel = max(rel, float(np.linalg.norm(a64 - b64)) / norm if norm > 0 else 0.0)
    return Fidelity(cos, max_abs, rel)
