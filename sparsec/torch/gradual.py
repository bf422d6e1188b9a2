"""Gradual pruning during training (Zhu & Gupta 2017, "To prune, or not to prune").

The sparsity follows the cubic schedule
    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3
updated every `frequency` steps from `start_step` to `end_step`, then held. Masks are chosen
by magnitude with the same patterns the passes use (`passes/sparsify/patterns.Pattern`, on the
same 2-D view: rows = outputs, columns = the reduction axis moved last), and applied as
parametrizations (`masks.py`), so the optimizer cannot revive a pruned weight. Kinds:

- `unstructured`: each layer at s_t zeros (Zhu & Gupta's per-layer schedule), or with
  `scope="global"` one magnitude threshold over all pruned layers (s_t zeros in total; layers
  whose weights are larger keep more);
- `nm` with pattern N:M: a ladder of ever stricter patterns following s_t towards 1 - N/M:
  dense, (2M-1):2M, ..., 2N:2M, then N:M at `end_step` (e.g. 2:4: dense -> 7:8 -> 6:8 ->
  5:8 -> 4:8 -> 2:4): each step only removes weights, and 2N:2M -> N:M only restricts where;
- `channels`: whole output channels (rows) by L2 norm, s_t of each layer's channels; the
  last layer (the classifier) is left alone. Compile the trained model with
  `--crop` to remove them physically.

Magnitudes are those of the masked weights, so a pruned weight stays pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sparsec.errors import OptionError
from sparsec.nm_pattern import parse_nm
from sparsec.passes.sparsify.patterns import Pattern
from sparsec.torch.masks import masks_of, set_mask

log = logging.getLogger("sparsec.torch")
KINDS = ("unstructured", "nm", "channels")
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def cubic_sparsity(step: int, *, initial: float, final: float, start_step: int, end_step: int) -> float:
    """Zhu & Gupta's cubic schedule at `step` (initial before start, final after end)."""
    if step <= start_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def nm_ladder(n: int, m: int) -> list[Pattern]:
    """(2M-1):2M ... 2N:2M, N:M: ever stricter patterns up to N:M."""
    return [Pattern("nm", n=k, m=2 * m) for k in range(2 * m - 1, 2 * n - 1, -1)] + [Pattern("nm", n=n, m=m)]


def weight2d(w: torch.Tensor) -> np.ndarray:
    """The passes' 2-D view of a torch Conv/Linear weight: [out, K] with the input axis last."""
    a = w.detach().cpu().float().numpy()
    moved = np.moveaxis(a, 1, -1)
    return moved.reshape(moved.shape[0], -1)


def weight_back(mask2d: np.ndarray, shape: torch.Size) -> torch.Tensor:
    moved = np.moveaxis(np.empty(tuple(shape), dtype=np.uint8), 1, -1).shape
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(mask2d.reshape(moved), -1, 1)))


class GradualPruner:
    """Call `step()` after every `optimizer.step()`; see the module docstring."""

    def __init__(
        self,
        module: nn.Module,
        *,
        kind: str = "unstructured",
        final_sparsity: float | None = None,
        pattern: str | None = None,
        initial_sparsity: float = 0.0,
        start_step: int = 0,
        end_step: int,
        frequency: int = 1,
        min_params: int = 1024,
        exclude: Sequence[str] = (),
        scope: str = "layer",
    ) -> None:
        if scope not in ("layer", "global") or (scope == "global" and kind != "unstructured"):
            raise OptionError(f"GradualPruner scope '{scope}': 'layer', or 'global' with kind 'unstructured'")
        self.scope = scope
        if kind not in KINDS:
            raise OptionError(f"GradualPruner kind '{kind}': expected one of {', '.join(KINDS)}")
        if end_step <= start_step or frequency < 1:
            raise OptionError(f"GradualPruner: need start_step < end_step and frequency >= 1, got {start_step}, {end_step}, {frequency}")
        self.nm = None
        if kind == "nm":
            p = parse_nm(pattern or "2:4")
            self.nm = (p.n, p.m)
            final_sparsity = 1.0 - p.n / p.m
        elif final_sparsity is None or not 0.0 < final_sparsity < 1.0:
            raise OptionError(f"GradualPruner kind '{kind}': final_sparsity must be between 0 and 1, got {final_sparsity}")
        if not 0.0 <= initial_sparsity <= final_sparsity:
            raise OptionError(f"GradualPruner: initial_sparsity {initial_sparsity} must be in [0, final_sparsity]")
        self.module, self.kind = module, kind
        self.initial, self.final = initial_sparsity, float(final_sparsity)
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.layers = self._select(module, min_params, exclude)
        if not self.layers:
            raise OptionError(f"GradualPruner: no Conv/Linear layer with >= {min_params} weights to prune")
        self.steps_taken = 0
        self.pattern_now: str = "dense"
        self._update()  # step 0: the initial sparsity (dense unless initial_sparsity > 0)

    def _select(self, module: nn.Module, min_params: int, exclude: Sequence[str]) -> list[str]:
        layers = [name for name, m in module.named_modules() if isinstance(m, LAYER_TYPES)]
        if self.kind == "channels" and layers:
            layers = layers[:-1]  # the classifier's outputs are the model's outputs
        keep = []
        for name in layers:
            w = module.get_submodule(name).weight
            if w.numel() < min_params or name in exclude:
                continue
            if self.nm and Pattern("nm", n=self.nm[0], m=self.nm[1]).skip_reason(w.shape[0], w.numel() // w.shape[0]):
                continue
            keep.append(name)
        return keep

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, initial=self.initial, final=self.final, start_step=self.start_step, end_step=self.end_step)

    def step(self) -> None:
        """Advance one training step; masks change on schedule steps only."""
        self.steps_taken += 1
        t = self.steps_taken
        on_schedule = self.start_step <= t <= self.end_step and ((t - self.start_step) % self.frequency == 0 or t == self.end_step)
        if on_schedule:
            self._update()

    def _pattern(self, step: int) -> Pattern:
        s = self.sparsity_at(step)
        if self.kind == "unstructured":
            return Pattern("unstructured", sparsity=s) if s > 0 else Pattern("dense")
        if self.kind == "channels":
            return Pattern("dense")  # rows are chosen in _channel_mask
        assert self.nm is not None
        ladder = nm_ladder(*self.nm)
        if step >= self.end_step:
            return ladder[-1]
        reached = [p for p in ladder[:-1] if 1.0 - p.density <= s + 1e-9]
        return reached[-1] if reached else Pattern("dense")

    def _update(self) -> None:
        t = self.steps_taken
        pattern = self._pattern(t)
        s = self.sparsity_at(t)
        if (self.kind == "channels" and s <= 0) or (self.kind != "channels" and pattern.is_dense):
            return
        self.pattern_now = str(pattern) if self.kind != "channels" else f"channels:{s:.3f}"
        if self.scope == "global":
            self._update_global(pattern)
            return
        for name in self.layers:
            w = self.module.get_submodule(name).weight  # the masked weight: pruned ones score 0
            scores = np.abs(weight2d(w))
            if self.kind == "channels":
                keep = _channel_keep(scores, s)
            else:
                keep = pattern.keep_mask(scores)
            set_mask(self.module, f"{name}.weight", weight_back(keep, w.shape).to(w.device))
        log.debug("gradual pruning step %d: %s", t, self.pattern_now)

    def _update_global(self, pattern: Pattern) -> None:
        weights = [self.module.get_submodule(name).weight for name in self.layers]
        scores = [np.abs(weight2d(w)).ravel() for w in weights]
        keep = pattern.keep_mask(np.concatenate(scores)[None, :])[0]
        offset = 0
        for name, w, sc in zip(self.layers, weights, scores, strict=True):
            part = keep[offset : offset + sc.size].reshape(w.shape[0], -1)
            offset += sc.size
            set_mask(self.module, f"{name}.weight", weight_back(part, w.shape).to(w.device))

    def sparsity(self) -> float:
        """Fraction of zeros over the pruned layers' weights, as the module holds them now."""
        zeros = total = 0
        for name in self.layers:
            w = self.module.get_submodule(name).weight
            zeros += int((w == 0).sum())
            total += w.numel()
        return zeros / total if total else 0.0

    def masks(self) -> dict[str, torch.Tensor]:
        return masks_of(self.module)


def _channel_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
    rows = scores.shape[0]
    norms = np.sqrt((scores.astype(np.float64) ** 2).sum(axis=1))
    drop = min(int(round(sparsity * rows)), rows - 1)  # never a layer with no channel
    keep_rows = np.ones(rows, dtype=bool)
    if drop > 0:
        keep_rows[np.argsort(norms, kind="stable")[:drop]] = False
    return np.repeat(keep_rows[:, None], scores.shape[1], axis=1)
