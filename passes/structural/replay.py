"""Replaying a recorded crop on the PyTorch module (for fine-tuning the cropped model).

The `crop-channels` pass records, per original parameter name (the `state_dict` key for
captured modules) and axis, the removed indices. Replaying slices those tensors in place
and updates the size attributes of standard layers (Conv, Linear, BatchNorm, LayerNorm).
Code that hard-codes sizes in `forward` (e.g. a head count in a reshape) must be updated
by its owner; the replay cannot see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sparsec.errors import InputError


def removed_by_param(decisions: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, list[int]]]:
    """{parameter name: {axis: removed indices}} from a manifest's `decisions`."""
    out: dict[str, dict[int, list[int]]] = {}
    for d in decisions:
        if d.get("pass") == "crop-channels" and "param" in d:
            out.setdefault(d["param"], {})[int(d["axis"])] = list(d["removed"])
    return out


def crop_state_dict(state: Mapping[str, Any], decisions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A new state_dict (torch tensors or arrays) with the recorded indices removed."""
    import torch

    plan = removed_by_param(decisions)
    missing = sorted(set(plan) - set(state))
    if missing:
        raise InputError(f"crop record names parameters the module lacks: {', '.join(missing[:3])}")
    out = dict(state)
    for name, axes in plan.items():
        t = torch.as_tensor(np.asarray(state[name]))
        for axis, gone in axes.items():
            keep = np.setdiff1d(np.arange(t.shape[axis]), gone)
            t = t.index_select(axis, torch.as_tensor(keep, dtype=torch.long))
        out[name] = t.contiguous()
    return out


def crop_module(module: Any, decisions: Iterable[Mapping[str, Any]]) -> Any:
    """Slice `module`'s parameters and buffers in place and fix standard layers' sizes."""
    import torch
    from torch import nn

    decisions = list(decisions)
    new = crop_state_dict(module.state_dict(), decisions)
    plan = removed_by_param(decisions)
    with torch.no_grad():
        for name in plan:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            current = getattr(owner, attr)
            if isinstance(current, nn.Parameter):
                setattr(owner, attr, nn.Parameter(new[name].to(current.dtype), requires_grad=current.requires_grad))
            else:
                owner._buffers[attr] = new[name].to(current.dtype)
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            was_depthwise = m.groups == m.in_channels and m.groups > 1
            m.out_channels = m.weight.shape[0]
            m.in_channels = m.weight.shape[1] * (m.weight.shape[0] if was_depthwise else m.groups)
            if was_depthwise:
                m.groups = m.out_channels
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.normalized_shape = tuple(m.weight.shape)
    return module
