"""`com.sparsec.MoE` in torch, trainable: the op's semantics (sparsec/dialect/moe.py) with the
router and the stacked expert weights as ordinary tensors, so they get gradients.

Masked dense like the reference lowering: every expert's activations are computed, then
multiplied by the per-token gate (TopK of the router logits scattered into [..., E]). The
top-k choice is not differentiable; with `gating=softmax` the softmax over the chosen
logits carries gradient to the router, with `gating=none` (sum of the chosen experts) the
router gets none from the task loss. For that case the op also returns, as two extra
outputs, the router logits and each expert's activation mass (the target the `learned`
router was fitted to, passes/moe/router.py: sum over its neurons of |activation| times the
norm of the neuron's output weights), so fine-tuning can distil the router towards the
experts as they are being trained (`FinetuneOptions.router_weight`). The extra logits are
computed from the detached input: the distillation moves the router, not its input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

ROUTER_LOGITS, EXPERT_MASS = "::router_logits", "::expert_mass"
EXTRA_OUTPUTS = (ROUTER_LOGITS, EXPERT_MASS)


def _activation(h: Tensor, name: str) -> Tensor:
    if name == "relu":
        return torch.relu(h)
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if name == "silu":
        return F.silu(h)
    raise ValueError(f"MoE activation '{name}' has no torch rule")


def _flat_in(w: Tensor) -> Tensor:
    """[E, D, F] -> [D, E*F], neurons expert-major (as `flat_experts(rows=False)`)."""
    e, d, f = w.shape
    return w.permute(1, 0, 2).reshape(d, e * f)


def moe(attrs: dict[str, Any], x: list[Tensor | None]) -> list[Tensor]:
    """[Y, router logits [..., E], expert mass [..., E] (no gradient)]."""
    inp, rw, rb, w1, b1, w2, b2 = x[:7]
    w_up = x[7] if len(x) > 7 else None
    assert inp is not None and rw is not None and rb is not None and w1 is not None
    assert b1 is not None and w2 is not None and b2 is not None
    e, _, f = w1.shape
    top_k = int(attrs["top_k"])
    logits = inp @ rw + rb
    values, indices = torch.topk(logits, top_k, dim=-1)
    chosen = torch.softmax(values, dim=-1) if attrs["gating"] == "softmax" else torch.ones_like(values)
    gate = torch.zeros_like(logits).scatter(-1, indices, chosen)
    a = _activation(inp @ _flat_in(w1) + b1.reshape(-1), attrs["activation"])
    if w_up is not None:
        a = a * (inp @ _flat_in(w_up))
    mask = gate.repeat_interleave(f, dim=-1)
    y = (a * mask) @ w2.reshape(e * f, -1) + b2
    with torch.no_grad():
        mass = (a.abs() * w2.norm(dim=2).reshape(-1)).reshape(*a.shape[:-1], e, f).sum(-1)
    # Distillation trains the router only, not the layers that produce its input.
    return [y, inp.detach() @ rw + rb, mass]


__all__ = ["EXTRA_OUTPUTS", "EXPERT_MASS", "ROUTER_LOGITS", "moe"]
