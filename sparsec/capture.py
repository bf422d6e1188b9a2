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
BATCH_DIM = "batch"


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
    """Export `module` (in eval mode) to the IR with `torch.export` + the ONNX exporter.

    Initializers are named by their `state_dict` keys and hold exactly the `state_dict`
    values (see `sparsec.ir.torch_cleanup` for why the exporter's own optimizer is off).
    With `dynamic_batch`, dim 0 of every input is the symbol "batch".
    """
    import torch

    from sparsec.ir.torch_cleanup import cleanup

    module = module.eval()
    args = tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises dims of size 0 and 1: trace a dynamic batch at >= 2.
        args = tuple(torch.cat([a, a]) if a.shape[0] < 2 else a for a in args)
        batch = torch.export.Dim(BATCH_DIM)
        dynamic_shapes = tuple({0: batch} for _ in args)
    with warnings.catch_warnings(), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=False,
                verbose=False,
            )
        except Exception as e:  # the exporter raises many types; report one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"torch.export could not capture {type(module).__name__}: {first}") from e
    model = program.model
    cleanup(model, module.state_dict().keys())
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


def load_any(spec: str, *, by_reference: bool = False) -> tuple[ir.Model, str]:
    """Load `path.onnx` or `zoo:NAME` (a models_zoo entry, exported on first use and cached);
    `by_reference`: a file's large inline weights stay in it (`load_model`)."""
    if spec.startswith("zoo:"):
        from sparsec.zoo_exports import cached_export_ir

        name = spec[4:]
        try:
            model = cached_export_ir(name)
        except KeyError as e:
            raise InputError(str(e.args[0]) if e.args else f"unknown zoo model '{name}'") from None
        check_supported(model, spec)
        return model, spec
    return load_model(Path(spec), by_reference=by_reference), spec
