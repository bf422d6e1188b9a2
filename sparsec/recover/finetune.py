"""Fine-tuning recovery: train the kept weights of a compressed IR with the dense IR as teacher.

Loss = output distillation + `feature_weight` x per-layer feature distillation, both as
normalised MSE (||s - t||^2 / ||t||^2, SquareHead-style, so every point weighs the same
whatever its scale). Feature points are values of the same name in both graphs: the
outputs of normalisation nodes (transformer block boundaries), else of weight layers; a
point whose shape differs (a cropped width) is skipped. With a row mask in the calibration
data (e.g. an attention mask) only real tokens count. Masks and N:M patterns are kept
exactly (`TorchGraph`) and checked after write-back. The teacher's targets on the training
samples are computed once with ONNX Runtime (`_TeacherTargets`) where they fit in memory.

Early stopping scores a validation set (mean output cosine vs the teacher) every
`eval_every` steps; the best weights are kept (the starting weights included, so the result
is never worse on it than the start) and training stops after `patience` evaluations
without improvement or when a time limit runs out. Give `validation` samples that neither
the compression nor the training saw: a held-out part of the calibration data, the
fallback, was usually fitted by the compression (SparseGPT, crop reconstruction), so it
rates the starting weights too well and stops training that helps on new data.

MoE-fied FFNs (`com.sparsec.MoE`) train their router and experts; with `router_weight` > 0
each router is also distilled towards its experts' activation mass (normalised MSE of the
logits, the objective the `learned` router was fitted with), because with `gating=none`
the top-k choice passes no gradient to the router.

The learning rate warms up linearly, then decays by a cosine to 10% over the run's length,
measured in steps, `max_seconds` or `max_cpu_seconds`, whichever runs out first (a
time-limited run still ends at a low rate).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from tqdm import tqdm

from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.errors import InternalError, OptionError
from sparsec.layers import find_layers
from sparsec.recover.augment import MODES as AUGMENT_MODES
from sparsec.recover.augment import Augmenter, vocab_sizes
from sparsec.recover.torch_graph import TorchGraph

log = logging.getLogger("sparsec.recover")
NORM_OPS = ("LayerNormalization", "BatchNormalization", "GroupNormalization", "InstanceNormalization")
MAX_FEATURE_POINTS = 16
# The teacher's targets on the training samples are computed once (with ONNX Runtime, much
# faster than the torch graph) and kept when they fit in this many bytes (fp16 features);
# else the teacher runs in torch every step.
TEACHER_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class FinetuneOptions:
    steps: int = 200
    lr: float = 3e-5
    batch_size: int = 16
    feature_weight: float = 1.0
    weight_decay: float = 0.0
    warmup: float = 0.05  # fraction of the run with a linear warm-up, then cosine decay to 10%
    held_out: float = 0.1  # without a validation set: fraction of the calibration samples kept for it
    eval_every: int = 25
    patience: int = 4
    max_seconds: float = 0.0  # 0: no time limit
    # Process CPU seconds (all threads), 0: no limit. On a shared machine wall time depends on
    # the load; CPU seconds / threads estimates the wall time on idle cores.
    max_cpu_seconds: float = 0.0
    threads: int = 2
    seed: int = 0
    progress: bool = True
    # Train on augmented copies of the samples too (augment.py); the teacher then runs every step.
    augment: bool = False
    augment_mode: str = "replace"  # augment.MODES: replace tokens (the samples' or the vocabulary's), splice new sequences
    # Weight of the router distillation term (MoE routers: logits towards the experts' mass).
    router_weight: float = 0.0
    # Block-wise reconstruction first (blockwise.py): epochs per segment (0: none), its peak
    # learning rate, and its share of the time limits (the end-to-end training gets the rest).
    blockwise_epochs: float = 0.0
    blockwise_lr: float = 1e-3
    blockwise_share: float = 0.5
    # With `augment`: the block-wise stage trains on augmented copies too (`blockwise_copies`
    # times the samples' augmented rows, drawn once), not on the samples alone.
    blockwise_copies: int = 0
    # End-to-end steps (student and teacher forward, student backward) under torch's CPU
    # autocast to bfloat16: 1.7x faster steps where the CPU has AVX-512 BF16 (bench/
    # bf16_step_probe.py). Weights, optimizer state, losses and the held-out scoring stay float32.
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise OptionError(f"fine-tuning: steps must be >= 1, got {self.steps}")
        if not self.lr > 0 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1 or min(self.max_seconds, self.max_cpu_seconds, self.router_weight) < 0:
            raise OptionError("fine-tuning: lr > 0, batch_size, eval_every and patience >= 1, time limits and router_weight >= 0 are required")
        if self.blockwise_copies < 0:
            raise OptionError("fine-tuning: blockwise_copies >= 0 is required")
        if self.blockwise_epochs < 0 or not self.blockwise_lr > 0 or not 0 < self.blockwise_share < 1:
            raise OptionError("fine-tuning: blockwise_epochs >= 0, blockwise_lr > 0 and blockwise_share in (0, 1) are required")
        if self.augment_mode not in AUGMENT_MODES:
            raise OptionError(f"fine-tuning: augment mode must be one of {', '.join(AUGMENT_MODES)}, got '{self.augment_mode}'")
        if not 0 < self.held_out < 1:
            raise OptionError(f"fine-tuning: held_out must lie in (0, 1), got {self.held_out}")


@dataclass
class FinetuneResult:
    steps_run: int
    best_step: int
    stopped: str  # why training ended
    seconds: float
    cosine_before: float  # validation mean output cosine vs the teacher
    cosine_after: float
    feature_points: list[str]
    params_trained: int
    validation: str = ""  # what early stopping scored
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    held_out_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out cosine)
    blockwise: dict[str, Any] | None = None  # the block-wise stage's record (BlockwiseResult.to_dict), if it ran

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = [[s, round(v, 6)] for s, v in self.losses]
        d["held_out_curve"] = [[s, round(v, 6)] for s, v in self.held_out_curve]
        d["seconds"] = round(self.seconds, 2)
        return d


def feature_points(student: ir.Model, teacher: ir.Model) -> list[str]:
    """Value names to distil at: normalisation outputs (else layer outputs) present in both."""
    teacher_values = {v.name for n in teacher.graph for v in n.outputs if v is not None}
    outputs = {v.name for v in student.graph.outputs}

    def common(names: list[str]) -> list[str]:
        return [n for n in dict.fromkeys(names) if n in teacher_values and n not in outputs]

    points = common([n.outputs[0].name for n in student.graph if n.op_type in NORM_OPS and n.outputs])
    if len(points) < 2:
        points = common([layer.node.outputs[0].name for layer in find_layers(student)])
    if len(points) > MAX_FEATURE_POINTS:
        picks = np.unique(np.linspace(0, len(points) - 1, MAX_FEATURE_POINTS).round().astype(int))
        points = [points[i] for i in picks]
    return points


def _nmse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((s - t) ** 2).sum() / (t**2).sum().clamp_min(1e-12)


def _real_rows(run: tuple[list[torch.Tensor], dict[str, torch.Tensor]], mask: torch.Tensor | None,
               ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """A TorchGraph run's outputs and captured values, real rows only, in float32 (a bf16 step's
    values are bfloat16; the losses are taken in float32)."""
    outputs, captured = run
    return [_rows(x, mask).float() for x in outputs], {name: _rows(v, mask).float() for name, v in captured.items()}


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and x.dim() == mask.dim() + 1 and tuple(x.shape[: mask.dim()]) == tuple(mask.shape):
        return x[mask]
    return x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)


def _mean_cosine(s: torch.Tensor, t: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(s.double(), t.double(), dim=-1, eps=1e-12).mean())


class _Batches:
    """Random micro-batches of the training samples, in the model's own batch size."""

    def __init__(self, calib: CalibrationData, micro: int, seed: int) -> None:
        self.calib, self.micro = calib, micro
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def next(self) -> tuple[list[int], dict[str, np.ndarray]]:
        if len(self.order) < self.micro:
            self.order += self.rng.permutation(self.calib.num_samples).tolist()
        take, self.order = self.order[: self.micro], self.order[self.micro :]
        return take, {k: v[take] for k, v in self.calib.arrays.items()}


class _TeacherTargets:
    """The teacher's outputs and feature-point rows per training sample (real rows only),
    computed once with ONNX Runtime; `get(indices)` concatenates them in batch order, the
    order `_rows` gives the student's values of that batch."""

    def __init__(self, teacher: ir.Model, train: CalibrationData, outputs: list[str], points: list[str]) -> None:
        from sparsec.calib.runner import CalibrationRunner

        self.outputs, self.points = outputs, points
        self.per_sample: dict[str, list[torch.Tensor]] = {n: [] for n in outputs + points}
        runner = CalibrationRunner(teacher, train)
        for batch, values in zip(runner.batches(), runner.values(outputs + points), strict=True):
            mask = _row_mask(train, batch)
            for name, x in values.items():
                dtype = torch.float32 if name in outputs else torch.float16
                t = torch.from_numpy(np.asarray(x, dtype=np.float32))
                for i in range(t.shape[0]):
                    rows = _rows(t[i : i + 1], None if mask is None else mask[i : i + 1])
                    self.per_sample[name].append(rows.to(dtype))

    @staticmethod
    def fits(teacher: ir.Model, train: CalibrationData, points: list[str]) -> bool:
        width = 0
        for v in teacher.graph:
            for out in v.outputs:
                if out is not None and out.name in points and out.shape is not None:
                    dims = [d for d in out.shape.dims if isinstance(d, int)]
                    width += int(np.prod(dims)) if dims else 0
        return train.num_samples * width * 2 <= TEACHER_CACHE_BYTES

    def get(self, indices: list[int]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        def cat(name: str) -> torch.Tensor:
            return torch.cat([self.per_sample[name][i] for i in indices]).float()

        return [cat(n) for n in self.outputs], {p: cat(p) for p in self.points}


def finetune(
    student_ir: ir.Model, teacher_ir: ir.Model, calib: CalibrationData, options: FinetuneOptions | None = None,
    *, validation: CalibrationData | None = None,
) -> FinetuneResult:
    """Train `student_ir`'s kept weights towards `teacher_ir` on `calib`; writes them back in
    place. `validation`: samples for early stopping (default: a held-out part of `calib`)."""
    o = options or FinetuneOptions()
    torch.manual_seed(o.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, o.threads))
    try:
        return _finetune(student_ir, teacher_ir, calib, o, validation)
    finally:
        torch.set_num_threads(threads)


def _split(calib: CalibrationData, validation: CalibrationData | None, micro: int, o: FinetuneOptions,
           ) -> tuple[CalibrationData, CalibrationData, str]:
    n = calib.num_samples
    if validation is not None:
        if n < micro or validation.num_samples < micro:
            raise OptionError(f"fine-tuning needs at least one batch of {micro} samples for training and for validation")
        return calib, validation, f"{validation.num_samples} separate samples ({validation.source})"
    n_held = max(micro, int(round(n * o.held_out)) // micro * micro)
    if n - n_held < micro:
        raise OptionError(f"fine-tuning needs more calibration samples: {n} leave fewer than one batch of {micro} for training")
    train, held = calib.split((n - n_held) / n)
    return train, held, f"{held.num_samples} held-out calibration samples (seen by the compression, if it was calibrated)"


def _with_augmented_copies(train: CalibrationData, o: FinetuneOptions, vocab: Mapping[str, int]) -> CalibrationData:
    """The samples plus the rows `blockwise_copies` augmented copies of them changed (a fixed
    set: the block-wise stage reuses its data every epoch)."""
    augmenter = Augmenter(train.arrays, train.row_mask, o.seed + 1, o.augment_mode, vocab)
    if not augmenter.active:
        return train
    parts = {k: [np.asarray(v)] for k, v in train.arrays.items()}
    for _ in range(o.blockwise_copies):
        copy = augmenter(train.arrays)
        changed = np.zeros(train.num_samples, dtype=bool)
        for k, v in copy.items():
            changed |= np.any(np.asarray(v) != np.asarray(train.arrays[k]), axis=tuple(range(1, np.ndim(v))))
        for k, v in copy.items():
            parts[k].append(np.asarray(v)[changed])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return CalibrationData(arrays, batch_size=train.batch_size, source=f"{train.source} + augmented copies",
                           row_mask=train.row_mask)


def check_masks(model: ir.Model, masks: Mapping[str, np.ndarray]) -> None:
    """Every entry outside its sparsity mask is still exactly zero (so N:M groups keep their pattern)."""
    for name, mask in masks.items():
        value = model.graph.initializers.get(name)
        if value is None or value.const_value is None:
            continue
        w = value.const_value.numpy()
        if w.shape != mask.shape or np.any(w[~mask] != 0):
            raise InternalError(f"fine-tuning broke the sparsity mask of '{name}'")


def _finetune(
    student_ir: ir.Model, teacher_ir: ir.Model, calib: CalibrationData, o: FinetuneOptions, validation: CalibrationData | None,
) -> FinetuneResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    calib.check_against(student_ir)
    if validation is not None:
        validation.check_against(student_ir)
    fixed = model_batch_size(student_ir)
    micro = fixed or o.batch_size
    accumulate = max(1, o.batch_size // micro)
    train, held, held_source = _split(calib, validation, micro, o)
    points = feature_points(student_ir, teacher_ir)
    blockwise = None
    if o.blockwise_epochs > 0 and points:
        data = _with_augmented_copies(train, o, vocab_sizes(teacher_ir)) if o.augment and o.blockwise_copies > 0 else train
        blockwise = _blockwise(student_ir, teacher_ir, data, held, points, o)
    student, teacher = TorchGraph(student_ir), TorchGraph(teacher_ir, trainable=())
    params = [p for p in student.params.values()]
    routers = student.router_points if o.router_weight > 0 else []
    router_names = [n for pair in routers for n in pair]
    log.info("fine-tuning %d parameters (%d tensors), %d feature points, %d steps of %d samples",
             sum(p.numel() for p in params), len(params), len(points), o.steps, micro * accumulate)

    # The held-out teacher outputs, once.
    held_batches = list(held.batches(micro, exact=fixed is not None))
    with torch.inference_mode():
        held_teacher = [teacher(b) for b in held_batches]

    def held_cosine() -> float:
        student.eval()
        scores = []
        with torch.no_grad():
            for b, t_out in zip(held_batches, held_teacher, strict=True):
                mask = _row_mask(held, b)
                s_out = student(b)
                scores.append(min(_mean_cosine(_rows(s, mask), _rows(t, mask)) for s, t in zip(s_out, t_out, strict=True)))
        return float(np.mean(scores))

    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    def budget_used() -> float:
        """Fraction of the time limits used (0 without one)."""
        used = 0.0
        if o.max_seconds > 0:
            used = (time.perf_counter() - start) / o.max_seconds
        if o.max_cpu_seconds > 0:
            used = max(used, (time.process_time() - cpu_start) / o.max_cpu_seconds)
        return used

    def lr_at(step: int) -> float:
        # Fraction of the run done, by steps or by the time limits, whichever is further.
        done = min(1.0, max((step + 1) / o.steps, budget_used()))
        if done < o.warmup:
            return o.lr * done / o.warmup
        progress = (done - o.warmup) / max(1e-9, 1 - o.warmup)
        return o.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    batches = _Batches(train, micro, o.seed)
    augmenter = Augmenter(train.arrays, train.row_mask, o.seed, o.augment_mode, vocab_sizes(teacher_ir)) if o.augment else None
    if augmenter is not None and not augmenter.active:
        log.info("fine-tuning: no input to augment (no float inputs, no token inputs with a row mask)")
        augmenter = None
    cached: _TeacherTargets | None = None
    if augmenter is None and _TeacherTargets.fits(teacher_ir, train, points):
        cached = _TeacherTargets(teacher_ir, train, [v.name for v in teacher_ir.graph.outputs], points)
    cosine_before = held_cosine()
    best, best_step = cosine_before, 0
    best_state = {k: p.detach().clone() for k, p in student.params.items()}
    result = FinetuneResult(0, 0, "steps done", 0.0, cosine_before, cosine_before, points, sum(p.numel() for p in params),
                            validation=held_source, blockwise=blockwise)
    result.held_out_curve.append((0, cosine_before))
    bad_evals = 0
    bar = tqdm(range(o.steps), desc="fine-tuning", unit="step", disable=not o.progress)
    for step in bar:
        student.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accumulate):
            take, b = batches.next()
            if augmenter is not None:
                b = augmenter(b)
            mask = _row_mask(train, b)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=o.bf16):
                s_out, s_feat = _real_rows(student.run(b, points + router_names), mask)
            if cached is not None:
                t_out, t_feat = cached.get(take)
            else:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=o.bf16):
                    t_out, t_feat = _real_rows(teacher.run(b, points), mask)
            loss = sum(_nmse(s, t) for s, t in zip(s_out, t_out, strict=True)) / len(s_out)
            matched = [p for p in points if p in s_feat and p in t_feat and s_feat[p].shape == t_feat[p].shape]
            if matched and o.feature_weight > 0:
                feat = sum(_nmse(s_feat[p], t_feat[p]) for p in matched) / len(matched)
                loss = loss + o.feature_weight * feat
            if routers:
                loss = loss + o.router_weight * sum(
                    _nmse(s_feat[lg], s_feat[ms]) for lg, ms in routers) / len(routers)
            (loss / accumulate).backward()
            total += float(loss.detach()) / accumulate
        optimizer.step()
        result.losses.append((step + 1, total))
        result.steps_run = step + 1
        bar.set_postfix(loss=f"{total:.4g}", held=f"{best:.4f}")
        out_of_time = budget_used() >= 1.0
        if (step + 1) % o.eval_every == 0 or step + 1 == o.steps or out_of_time:
            score = held_cosine()
            result.held_out_curve.append((step + 1, score))
            log.info("fine-tuning step %d: loss %.5f, held-out cosine %.5f", step + 1, total, score)
            if score > best:
                best, best_step, bad_evals = score, step + 1, 0
                best_state = {k: p.detach().clone() for k, p in student.params.items()}
            else:
                bad_evals += 1
            if bad_evals >= o.patience:
                result.stopped = f"early stop: no held-out improvement in {o.patience} evaluations"
                break
        if out_of_time:
            result.stopped = "time limit" + (f" of {o.max_seconds:g} s" if o.max_seconds > 0 else "") + (
                f" of {o.max_cpu_seconds:g} CPU-s" if o.max_cpu_seconds > 0 else "")
            break
    bar.close()
    with torch.no_grad():
        for k, p in student.params.items():
            p.copy_(best_state[k])
    student.write_back(student_ir)
    check_masks(student_ir, student.masks_np)
    result.best_step, result.cosine_after = best_step, best
    result.seconds = time.perf_counter() - start
    return result


def _blockwise(student_ir: ir.Model, teacher_ir: ir.Model, train: CalibrationData, held: CalibrationData,
               points: list[str], o: FinetuneOptions) -> dict[str, Any]:
    """Block-wise reconstruction before the end-to-end training, within its share of the limits."""
    from sparsec.recover.blockwise import BlockwiseOptions, blockwise_reconstruct

    cpu = o.max_cpu_seconds * o.blockwise_share
    if o.max_seconds > 0:  # a wall-clock limit: as CPU seconds at full use of the threads
        wall_cpu = o.max_seconds * o.blockwise_share * max(1, o.threads)
        cpu = min(cpu, wall_cpu) if cpu > 0 else wall_cpu
    options = BlockwiseOptions(epochs=o.blockwise_epochs, lr=o.blockwise_lr, batch_size=o.batch_size,
                               max_cpu_seconds=cpu, threads=o.threads, seed=o.seed)
    result = blockwise_reconstruct(student_ir, teacher_ir, train, held, points, options).to_dict()
    log.info("block-wise reconstruction: %d segments in %.0f CPU-s", len(result["segments"]), result["cpu_seconds"])
    return result


def _row_mask(calib: CalibrationData, batch: Mapping[str, np.ndarray]) -> torch.Tensor | None:
    if calib.row_mask is None:
        return None
    return torch.from_numpy(np.asarray(batch[calib.row_mask]) != 0)


__all__ = ["FinetuneOptions", "FinetuneResult", "check_masks", "feature_points", "finetune"]
