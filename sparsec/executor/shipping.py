"""Shipping a model to executor tasks once.

In process (the local executor) tasks read the caller's `ir.Model` itself. Elsewhere the
model travels as a `ModelPayload`: the proto with its large initializers as placeholders
(`proto_with_external_weights`, so protobuf's 2 GB limit does not apply) plus the weights
as arrays, which Ray's object store hands to workers on one machine without copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.executor.base import Executor, Shared
from sparsec.ir.session import proto_with_external_weights


@dataclass(frozen=True)
class ModelPayload:
    proto: bytes  # the model without its large weights
    arrays: dict[str, np.ndarray]  # initializer name -> weights

    @classmethod
    def from_model(cls, model: ir.Model) -> ModelPayload:
        proto, arrays = proto_with_external_weights(model)
        return cls(proto.SerializeToString(), arrays)

    def to_model(self) -> ir.Model:
        model = ir.serde.deserialize_model(onnx.load_from_string(self.proto))
        for name, array in self.arrays.items():
            model.graph.initializers[name].const_value = ir.Tensor(array, name=name)
        return model


def share_model(executor: Executor, model: ir.Model) -> Shared:
    """A handle tasks turn back into the model with `shared_model`."""
    if executor.name == "local":
        return executor.share(model)
    return executor.share(ModelPayload.from_model(model))


def shared_model(handle: Shared) -> ir.Model:
    value: Any = handle.get()
    return value.to_model() if isinstance(value, ModelPayload) else value


__all__ = ["ModelPayload", "share_model", "shared_model"]
