"""Export zoo models to ONNX with the torch dynamo exporter, keeping state_dict names."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import onnx_ir as ir

from sparsec.capture import from_torch
from sparsec.zoo_exports import export_path

from .registry import get

log = logging.getLogger(__name__)

# Protobuf cannot serialise a single message over 2 GiB; stay clear of it.
_MAX_INLINE_BYTES = 1_800_000_000


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
    nbytes = _weight_bytes(model)
    external = f"{path.name}.data" if nbytes > _MAX_INLINE_BYTES else None
    if external:
        log.warning("%s has %.1f GB of weights: writing them to %s", name, nbytes / 1e9, external)
    ir.save(model, path, external_data=external)
    return path


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def cached_export_ir(name: str, batch: int = 1, opset: int = 18, dynamic: bool | None = None) -> ir.Model:
    """:func:`export_ir` through the on-disk cache (``cache_dir()/exports``): what `zoo:NAME`
    compiles. A torch export of a zoo transformer takes 5-15 s and gives the same bytes every
    time, so it is made once per (model, shapes, opset) and per version of everything that
    shapes it: the zoo's and the capture's source, torch, onnx and onnxscript. The file is
    loaded like any user's .onnx file (checks included)."""
    from sparsec.ir.io import load_model

    get(name)  # an unknown name fails here, before any file is made
    path = export_path(name, batch, opset, dynamic)
    if not path.is_file():
        model = export_ir(name, batch=batch, opset=opset, dynamic=dynamic)
        if _weight_bytes(model) > _MAX_INLINE_BYTES:  # needs external data: not cached
            return model
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:  # written aside and renamed: a concurrent process never reads a partial file
            ir.save(model, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return load_model(path, check_ops=False)
