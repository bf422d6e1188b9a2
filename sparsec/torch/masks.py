"""Masks that hold during the user's own training: a `torch.nn.utils.parametrize`
parametrization computes `weight = original * mask` on every access, so an optimizer step on
the original can never revive a pruned weight (its gradient is masked too)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class Mask(nn.Module):
    """`weight = original * mask`; the mask is a buffer (saved with the state_dict, never trained)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def set_mask(module: nn.Module, key: str, mask: torch.Tensor) -> None:
    """Mask the parameter `key` (a state_dict key such as 'layer1.0.conv1.weight'); a second
    call replaces the mask in place."""
    owner_name, _, attr = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    existing = _mask_module(owner, attr)
    if existing is not None:
        existing.mask.copy_(mask.to(torch.bool))
        with torch.no_grad():  # a weight pruned now and let back later starts again from zero
            owner.parametrizations[attr].original.mul_(existing.mask.to(owner.parametrizations[attr].original.dtype))
        return
    with torch.no_grad():  # start from a masked original, so unmasking later shows zeros there
        getattr(owner, attr).mul_(mask.to(getattr(owner, attr).dtype))
    parametrize.register_parametrization(owner, attr, Mask(mask.to(getattr(owner, attr).device)), unsafe=True)


def _mask_module(owner: nn.Module, attr: str) -> Mask | None:
    if not parametrize.is_parametrized(owner, attr):
        return None
    return next((p for p in owner.parametrizations[attr] if isinstance(p, Mask)), None)


def masks_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """{state_dict key of the masked parameter (as before masking): its boolean mask}."""
    out = {}
    for name, m in module.named_modules():
        if parametrize.is_parametrized(m):
            for attr in m.parametrizations:
                mask = _mask_module(m, attr)
                if mask is not None:
                    out[f"{name}.{attr}" if name else attr] = mask.mask
    return out


def remove_masks(module: nn.Module) -> nn.Module:
    """Bake every mask into its parameter (zeros stay zeros) and restore plain state_dict keys."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            for attr in list(m.parametrizations):
                if _mask_module(m, attr) is not None:
                    parametrize.remove_parametrizations(m, attr, leave_parametrized=True)
    return module


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with masks applied and the original keys ('conv.weight', not
    'conv.parametrizations.weight.original'); the module itself is left as it is."""
    masks = masks_of(module)
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if ".parametrizations." in key or key.startswith("parametrizations."):
            head, _, tail = key.partition("parametrizations.")
            attr, _, rest = tail.partition(".")
            plain = f"{head}{attr}"
            if rest == "original":
                out[plain] = value * masks[plain].to(value.dtype) if plain in masks else value
            continue
        out[key] = value
    return out
