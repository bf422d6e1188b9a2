"""Hand an IR model to ONNX Runtime without serializing its weights.

Serializing a model copies every weight into one protobuf message (BERT-base: 440 MB, about a
second per copy), and ONNX Runtime then parses that message back. Compiles open several
sessions on the same weights (verification after each pass, fidelity, benchmark), so instead
the graph is serialized with each large initializer as an external-data placeholder and the
weights are handed over as OrtValues wrapping the IR's own arrays
(`SessionOptions.add_external_initializers`): no copy on either side, and the placeholders'
location is never read (ONNX Runtime replaces those tensors before it would load them).

The artifact's model.onnx is still written in full by `sparsec.ir.io.model_bytes`.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.ir.io import to_proto

# Tensors smaller than this stay inside the message: shape constants and the like, which
# ONNX Runtime's graph optimizations read while they transform the graph.
MIN_EXTERNAL_BYTES = 4096
# Placeholder location of the weights handed over in memory; ONNX Runtime never opens it.
IN_MEMORY_LOCATION = "sparsec-in-memory.bin"
# Element types OrtValue.ortvalue_from_numpy takes without conversion.
_NUMPY_TYPES = frozenset(
    {
        ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.INT8, ir.DataType.INT16,
        ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32,
        ir.DataType.UINT64, ir.DataType.BOOL,
    }
)


# tensor -> its array. A tensor read from a file gives its data as a fresh copy on every
# numpy() call (BERT-base: 0.55 s per model); the IR's clones share tensor objects, so the
# sessions of one compile share one array per weight.
_ARRAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _array(tensor: ir.TensorProtocol) -> np.ndarray:
    try:
        return _ARRAYS[tensor]
    except (KeyError, TypeError):
        pass
    array = np.ascontiguousarray(tensor.numpy())
    with contextlib.suppress(TypeError):  # a tensor type without weak references: not cached
        _ARRAYS[tensor] = array
    return array


@dataclass
class SessionModel:
    """A model as ONNX Runtime takes it: the graph bytes plus its large weights as arrays."""

    graph_bytes: bytes
    initializers: dict[str, np.ndarray] = field(default_factory=dict)


def session_model(model: ir.Model) -> SessionModel:
    """`model` split into a weight-less serialized graph and its large initializers.

    The initializers' tensors are swapped for placeholders only while the graph is
    serialized and put back before returning, even on error: `model` ends as it began
    (swapping a few attributes instead of cloning the graph: ~0.15 s per call on BERT-base).
    """
    arrays: dict[str, np.ndarray] = {}
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is None:
                continue
            external = isinstance(tensor, ir.ExternalTensor)  # the input's own external data
            # ONNX Runtime drops initializers no node uses before it takes the in-memory ones
            # (and then refuses those names): unused ones stay inline.
            unused = not value.uses() and not value.is_graph_output()
            if tensor.dtype not in _NUMPY_TYPES or unused or (tensor.nbytes < MIN_EXTERNAL_BYTES and not external):
                if external:  # ONNX Runtime would resolve its file against the working folder
                    swapped.append((value, tensor))
                    value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=name)
                continue
            arrays[name] = _array(tensor)
            swapped.append((value, tensor))
            value.const_value = ir.ExternalTensor(
                IN_MEMORY_LOCATION, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=name
            )
        graph_bytes = to_proto(model).SerializeToString()
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    return SessionModel(graph_bytes, arrays)


def inline_weights(graph_bytes: bytes, initializers: dict[str, np.ndarray]) -> bytes:
    """The full serialized model: `graph_bytes` with its placeholders filled from `initializers`."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph_bytes)
    for tensor in proto.graph.initializer:
        if tensor.name in initializers:
            tensor.CopyFrom(numpy_helper.from_array(initializers[tensor.name], tensor.name))
    return proto.SerializeToString()
