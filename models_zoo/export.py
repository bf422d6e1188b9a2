"""Export zoo models to ONNX with the torch dynamo exporter, keeping state_dict names."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import onnx_ir as ir

from sparsec.capture import from_torch
from sparsec.ir.file_tensor import weight_bytes
from sparsec.zoo_exports import cached_export_ir  # noqa: F401  (re-exported: the zoo's cached export)

from .registry import get

log = logging.getLogger(__name__)

# Protobuf cannot serialise a single message over 2 GiB; stay clear of it.
MAX_INLINE_BYTES = 1_800_000_000


def export_ir(name: str, batch: int = 1, opset: int = 18, dynamic: bool | None = None) -> ir.Model:
    """The zoo model ``name`` as an ``onnx_ir.Model``.

    Parameter initializers are named by their ``state_dict`` keys and hold exactly the
    ``state_dict`` values (buffers the graph does not read, such as BatchNorm's
    ``num_batches_tracked``, are absent). ``dynamic`` (default: the entry's
    ``dynamic_batch``) makes dim 0 of every input and output the symbol ``"batch"``;
    otherwise it is fixed to ``batch``.
    """
    entry = get(name)
    dynamic = entry.dynamic_batch if dynamic is None else dynamic
    start = time.perf_counter()
    onnx_model = from_torch(
        entry.build(),
        entry.example_inputs(max(batch, 2) if dynamic else batch),
        input_names=entry.input_names,
        output_names=entry.output_names,
        dynamic_batch=dynamic,
        opset=opset,
    )
    onnx_model.metadata_props["sparsec.zoo.model"] = name
    log.info("exported %s to ONNX in %.2f s", name, time.perf_counter() - start)
    return onnx_model


def export_onnx(
    name: str, path: str | Path, batch: int = 1, opset: int = 18, dynamic: bool | None = None
) -> Path:
    """Export the zoo model ``name`` to the ONNX file ``path`` (weights inside the file).

    Exporting the same model twice gives byte-identical files. See :func:`export_ir`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = export_ir(name, batch=batch, opset=opset, dynamic=dynamic)
    nbytes = weight_bytes(model)
    external = f"{path.name}.data" if nbytes > MAX_INLINE_BYTES else None
    if external:
        log.warning("%s has %.1f GB of weights: writing them to %s", name, nbytes / 1e9, external)
    ir.save(model, path, external_data=external)
    return path
