"""Capture: ONNX files and PyTorch modules into the IR.

PyTorch modules go through `torch.export` and the torch ONNX exporter, whose result is an
`onnx_ir` model whose initializers keep the `state_dict` keys, so every decision maps back
to the module's parameters.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx_ir as ir

from sparsec.errors import InputError
from sparsec.ir.io import check_supported, load_model

if TYPE_CHECKING:
    import torch

log = logging.getLogger("sparsec.capture")
DEFAULT_OPSET = 18


def from_onnx(path: str | os.PathLike) -> ir.Model:
    return load_model(path)


def from_torch(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
) -> ir.Model:
    """Export `module` (in eval mode) to the IR with `torch.export` + the ONNX exporter."""
    import torch

    module = module.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with warnings.catch_warnings(), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                tuple(example_inputs),
                dynamo=True,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many types; report one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"torch.export could not capture {type(module).__name__}: {first}") from e
    model = program.model
    # Exporter metadata (stack traces, pkg versions) would make the IR differ run to run.
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass

    ClearMetadataAndDocStringPass()(model)
    for value in model.graph.initializers.values():
        value.metadata_props.clear()
    check_supported(model, type(module).__name__)
    return model


class _quiet_torch_logs:
    """The exporter logs progress at INFO; keep the CLI output to our own messages."""

    def __enter__(self) -> None:
        self._levels = {}
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
            lg = logging.getLogger(name)
            self._levels[name] = lg.level
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def load_any(spec: str) -> tuple[ir.Model, str]:
    """Load `path.onnx` or `zoo:NAME` (a models_zoo entry, exported on the fly)."""
    if spec.startswith("zoo:"):
        from sparsec.models_zoo.export import export_ir

        name = spec[4:]
        try:
            model = export_ir(name)
        except KeyError as e:
            raise InputError(str(e.args[0]) if e.args else f"unknown zoo model '{name}'") from None
        check_supported(model, spec)
        return model, spec
    return load_model(Path(spec)), spec
