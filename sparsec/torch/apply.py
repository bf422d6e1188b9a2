"""An artifact's decisions, applied to the user's original `nn.Module`.

The artifact's `model.onnx` holds the final value of every parameter (cropped, masked, and
for data criteria reconstructed) and its manifest the decisions. Applying them:

1. place every `state_dict` key in the artifact (`mapping.py`: by graph position, else name);
2. crop: replay the recorded crops (`passes/structural/replay.py`); a key whose initializer
   was deduplicated into another's takes that initializer's crop record;
3. load the artifact's values, checking each against the cropped original (exact where the
   decision keeps values; a different model fails here, with the key that differs);
4. mask every weight a sparsity decision pruned, with its zero pattern from the artifact,
   as a parametrization that holds during training (`masks.py`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from sparsec.errors import ArtifactMismatchError, InputError, UnsupportedError
from sparsec.torch.mapping import map_state_dict, match_by_value
from sparsec.torch.masks import set_mask
from sparsec.torch.packed import unpacked_initializers

log = logging.getLogger("sparsec.torch")

# Passes whose per-weight decisions are a zero pattern in the weight (N:M, unstructured, block).
WEIGHT_PATTERN_PASSES = frozenset({"nm-sparsity", "sparsify", "allocate"})
# Lowerings of those decisions whose packed weights `packed.py` unpacks.
UNPACKED_LOWERINGS = frozenset({"lower-nm-kernels"})
# Records that change nothing in the weights (analyses, refusals, skips).
NO_CHANGE = frozenset({"skip", "refused", "dense"})
VALUE_KEEPING_CRITERIA = frozenset({"magnitude", "wanda", None})


@dataclass
class Applied:
    """What `apply_artifact` did: key -> initializer, and the keys cropped and masked."""

    mapping: dict[str, str]
    cropped: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    reconstructed: list[str] = field(default_factory=list)  # values changed by a data criterion


def load_artifact(artifact: str | Path | tuple[ir.Model, Mapping[str, Any]]) -> tuple[ir.Model, dict[str, Any]]:
    if isinstance(artifact, tuple):
        model, manifest = artifact
        return model, dict(manifest)
    from sparsec.ir.io import load_model

    folder = Path(artifact)
    onnx_path, manifest_path = folder / "model.onnx", folder / "manifest.json"
    if not onnx_path.is_file() or not manifest_path.is_file():
        raise InputError(f"{folder} is not a sparsec artifact (needs model.onnx and manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as e:
        raise InputError(f"{manifest_path}: not JSON ({e})") from None
    return load_model(onnx_path, check_ops=False), manifest


def unsupported_decisions(decisions: list[dict[str, Any]]) -> list[str]:
    """'pass: decision' for every decision that changes the model and that this module cannot replay."""
    bad = []
    for d in decisions:
        p, what = d.get("pass"), d.get("decision")
        if p == "crop-channels" or what is None or str(what) in NO_CHANGE:
            continue
        if (p in WEIGHT_PATTERN_PASSES and "weight" in d) or p in UNPACKED_LOWERINGS:
            continue
        bad.append(f"{p}: {what}")
    return sorted(set(bad))


def apply_artifact(
    module: nn.Module, artifact: str | Path | tuple[ir.Model, Mapping[str, Any]], *, masks: bool = True
) -> Applied:
    """Apply the artifact's crops, values and masks to `module` in place (see the module docstring).

    Raises `UnsupportedError` for decision kinds that cannot be replayed on a module (MoE
    rewrites, sparse attention), `ArtifactMismatchError` when the artifact does not come from
    this module, and `InputError` for an unreadable artifact.
    """
    from sparsec.passes.structural.replay import crop_module, removed_by_param

    model, manifest = load_artifact(artifact)
    decisions = list(manifest.get("decisions", []))
    if any(d.get("pass") == "lower-conv-nchwc" and str(d.get("decision", "")).startswith("kernel") for d in decisions):
        raise UnsupportedError(
            "sparsec.torch cannot apply this artifact to a module: its convs were laid out by ONNX Runtime for "
            "this CPU (lower-conv-nchwc: BatchNorm fused into the weights, weights renamed); compile with "
            "tuning off (--no-tune, CompileOptions(tune=False)) for an artifact to apply"
        )
    bad = unsupported_decisions(decisions)
    if bad:
        raise UnsupportedError(
            f"sparsec.torch cannot apply these decisions to a module: {', '.join(bad[:4])}"
            " (supported: crop-channels, and N:M/unstructured/block weight sparsity)"
        )
    state = module.state_dict()
    float_keys = [k for k, v in state.items() if v.is_floating_point()]
    unpacked = unpacked_initializers(model)  # weights the ORT backend packed for its N:M kernels
    mapping = map_state_dict(model, module, float_keys, extra_names=unpacked)
    mapping.update(match_by_value(model, state, [k for k in float_keys if k not in mapping]))
    _check_coverage(model, decisions, mapping, float_keys)

    # Crops: a key reads the crop record of the initializer it maps to (deduplicated ones too).
    crops = removed_by_param(decisions)
    replay = []
    for key in float_keys:
        axes = crops.get(mapping.get(key, key))
        for axis, removed in (axes or {}).items():
            replay.append({"pass": "crop-channels", "param": key, "axis": axis, "removed": removed})
    # Everything is checked against the cropped state_dict before the module changes, so a
    # refused artifact leaves the module as it was.
    cropped_ref = _cropped({k: v.detach() for k, v in state.items()}, replay)
    pattern_of = {d["weight"]: d for d in decisions if d.get("pass") in WEIGHT_PATTERN_PASSES and "weight" in d
                  and str(d.get("decision")) not in NO_CHANGE}
    inits = model.graph.initializers

    def value_of(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(unpacked[name] if name in unpacked else inits[name].const_value.numpy()))

    applied = Applied(mapping=mapping, cropped=sorted({r["param"] for r in replay}))
    changed_values = _reconstructed_owners(pattern_of, mapping)
    values = {}
    for key, name in mapping.items():
        value, ref = value_of(name), cropped_ref[key]
        if tuple(value.shape) != tuple(ref.shape):
            raise ArtifactMismatchError(
                f"artifact does not match this module: '{key}' has shape {tuple(ref.shape)} after the "
                f"recorded crops, the artifact's '{name}' has {tuple(value.shape)}"
            )
        if key.rpartition(".")[0] in changed_values:
            applied.reconstructed.append(key)
        else:
            _check_values(key, name, ref, value)
        values[key] = value

    if replay:
        crop_module(module, replay)
    live = module.state_dict()
    with torch.no_grad():
        for key, value in values.items():
            live[key].copy_(value.to(live[key].dtype))
    if masks:
        for key, name in mapping.items():
            if name in pattern_of:
                set_mask(module, key, values[key] != 0)
                applied.masked.append(key)
    log.info("sparsec.torch: %d keys placed, %d cropped, %d masked", len(mapping), len(applied.cropped), len(applied.masked))
    return applied


def _check_coverage(model: ir.Model, decisions: list[dict[str, Any]], mapping: dict[str, str], keys: list[str]) -> None:
    placed = set(mapping.values())
    named = sorted({d["weight"] for d in decisions if "weight" in d and str(d.get("decision")) not in NO_CHANGE})
    missing = [w for w in named if w not in placed]
    if missing:
        raise ArtifactMismatchError(
            f"artifact does not match this module: its decisions name weights no state_dict key maps to "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    if not mapping and keys:
        raise ArtifactMismatchError("artifact does not match this module: none of its state_dict keys is in the artifact")


def _reconstructed_owners(pattern_of: dict[str, dict[str, Any]], mapping: dict[str, str]) -> set[str]:
    """Modules whose weights (and fitted biases) a data criterion rewrote: values not comparable."""
    owners = set()
    for key, name in mapping.items():
        d = pattern_of.get(name)
        if d is not None and d.get("criterion") not in VALUE_KEEPING_CRITERIA:
            owners.add(key.rpartition(".")[0])
    return owners


def _cropped(state: dict[str, torch.Tensor], replay: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    from sparsec.passes.structural.replay import crop_state_dict

    return crop_state_dict(state, replay) if replay else state


def _check_values(key: str, name: str, ref: torch.Tensor, value: torch.Tensor) -> None:
    """The artifact's value must be the module's (cropped) value wherever it is nonzero."""
    ref = torch.as_tensor(ref).to(torch.float32)
    value = value.to(torch.float32)
    kept = value != 0
    diff = (ref - value).abs()[kept]
    if diff.numel() and float(diff.max()) > 1e-6 * (1.0 + float(ref.abs().max())):
        raise ArtifactMismatchError(
            f"artifact does not match this module: '{key}' differs from the artifact's '{name}' "
            f"(max |diff| {float(diff.max()):.3g}); was the artifact compiled from another model or weights?"
        )
