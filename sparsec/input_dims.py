"""`--dim NAME=VALUE` only names symbolic dimensions of the model's inputs."""

from __future__ import annotations

import onnx_ir as ir

from sparsec.errors import OptionError


def symbolic_input_dims(model: ir.Model) -> list[str]:
    names: list[str] = []
    for value in model.graph.inputs:
        for d in value.shape or ():
            if isinstance(d, ir.SymbolicDim) and d.value is not None and d.value not in names:
                names.append(d.value)
    return names


def check_dims(model: ir.Model, dims: dict[str, int]) -> None:
    """Raise OptionError for a --dim the model's inputs do not have (an unknown or a fixed one)."""
    if not dims:
        return
    known = symbolic_input_dims(model)
    for name, value in dims.items():
        if name in known:
            continue
        if known:
            has = "its symbolic input dimensions are " + ", ".join(known)
        else:
            shapes = ", ".join(
                f"{v.name}[{','.join(str(d) for d in v.shape)}]" if v.shape is not None else str(v.name)
                for v in model.graph.inputs
            )
            has = f"its input shapes are fixed: {shapes}"
        raise OptionError(f"--dim {name}={value}: the model has no symbolic input dimension '{name}'; {has}")
