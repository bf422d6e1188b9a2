"""Block-wise reconstruction: train each segment of the compressed model on its own towards the
dense model's values at the segment's end (EBFT-style, after one-shot pruning).

The feature points of `finetune` (normalisation outputs: transformer block boundaries) cut
the graph into segments; every `span` points make one segment (and the layers after the last point, if any,
one more, with the graph's first output as target). Segments are trained in graph
order: a segment's inputs are the compressed model's values at its start (the segments
before it already trained, so it learns to undo the error that reaches it), its target the
dense model's values at its end, its loss the normalised MSE over real rows. Only the
segment's parameters train (masks kept, as in `TorchGraph`); the inputs are computed once per
segment for every sample, so a step costs one segment's forward and backward, not the
model's, and a segment sees many cheap steps. Each segment keeps its best weights by the
validation samples' segment loss (the starting weights included: never worse on them).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.errors import OptionError
from sparsec.recover.torch_graph import TorchGraph

log = logging.getLogger("sparsec.recover")


@dataclass(frozen=True)
class BlockwiseOptions:
    epochs: float = 8.0  # passes over the training samples per segment (at most)
    lr: float = 1e-3
    batch_size: int = 16
    span: int = 2  # feature points per segment (2: one transformer block of a post-norm encoder)
    warmup: float = 0.05
    max_cpu_seconds: float = 0.0  # process CPU seconds for all segments together (0: no limit)
    evals: int = 4  # validation checks per segment (the best weights are kept)
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.epochs > 0 or not self.lr > 0 or self.batch_size < 1 or self.span < 1 or self.evals < 1:
            raise OptionError("block-wise reconstruction: epochs, lr > 0 and batch_size, span, evals >= 1 are required")
        if self.max_cpu_seconds < 0:
            raise OptionError("block-wise reconstruction: max_cpu_seconds must be >= 0")


@dataclass
class SegmentRecord:
    end: str
    params: int
    steps: int
    loss_before: float  # validation segment loss (normalised MSE) with the starting weights
    loss_after: float  # the kept weights' (<= loss_before)
    train_loss_first: float
    train_loss_last: float
    cpu_s: float


@dataclass
class BlockwiseResult:
    segments: list[SegmentRecord] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    validation: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s in d["segments"]:
            for k in ("loss_before", "loss_after", "train_loss_first", "train_loss_last", "cpu_s"):
                s[k] = round(s[k], 6)
        d["seconds"], d["cpu_seconds"] = round(self.seconds, 2), round(self.cpu_seconds, 2)
        return d


def _nmse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and s.dim() == mask.dim() + 1:
        s, t = s[mask], t[mask]
    return ((s - t) ** 2).sum() / (t**2).sum().clamp_min(1e-12)


class _Samples:
    """Graph inputs of a sample set as tensors, and its row mask."""

    def __init__(self, data: CalibrationData, input_names: list[str], fixed: int | None) -> None:
        # A graph with a fixed batch size takes whole batches of it only: the rest is left out.
        self.n = data.num_samples - (data.num_samples % fixed if fixed else 0)
        if self.n < 1:
            raise OptionError(f"block-wise reconstruction: fewer samples than the model's fixed batch of {fixed}")
        self.feeds = {k: torch.from_numpy(np.asarray(data.arrays[k])) for k in input_names if k in data.arrays}
        self.mask = torch.from_numpy(np.asarray(data.arrays[data.row_mask]) != 0) if data.row_mask else None

    def take(self, idx: np.ndarray | slice) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        return {k: v[idx] for k, v in self.feeds.items()}, None if self.mask is None else self.mask[idx]


def _propagate(graph: TorchGraph, steps: list, start: str | None, end: str, values: torch.Tensor | None,
               samples: _Samples, batch: int) -> torch.Tensor:
    """`end`'s values for every sample, from `start`'s (`values`; None: from the graph inputs)."""
    outs = []
    with torch.no_grad():
        for i in range(0, samples.n, batch):
            feeds, _ = samples.take(slice(i, i + batch))
            given = {} if start is None or values is None else {start: values[i : i + batch]}
            outs.append(graph.run_segment(steps, given, feeds, [end])[0])
    return torch.cat(outs)


def blockwise_reconstruct(
    student_ir: ir.Model, teacher_ir: ir.Model, train: CalibrationData, validation: CalibrationData,
    points: list[str], options: BlockwiseOptions | None = None,
) -> BlockwiseResult:
    """Train `student_ir`'s segments between the feature `points` (in graph order) towards
    `teacher_ir`; writes the weights back in place."""
    o = options or BlockwiseOptions()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, o.threads))
    torch.manual_seed(o.seed)
    try:
        return _run(student_ir, teacher_ir, train, validation, points, o)
    finally:
        torch.set_num_threads(threads)


def _run(student_ir: ir.Model, teacher_ir: ir.Model, train: CalibrationData, validation: CalibrationData,
         points: list[str], o: BlockwiseOptions) -> BlockwiseResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    student, teacher = TorchGraph(student_ir), TorchGraph(teacher_ir, trainable=())
    result = BlockwiseResult(validation=f"{validation.num_samples} samples ({validation.source})")
    ends = points[:: o.span]  # the first segment runs from the graph inputs to the first point
    if points and points[-1] not in ends:
        ends.append(points[-1])
    output = student.output_names[0]
    if student.segment_params(student.segment(ends[-1:], [output])):  # layers after the last point (a final norm, a head)
        ends.append(output)
    fixed = model_batch_size(student_ir)
    batch = fixed or 64  # samples per forward pass when propagating values
    sets = {n: _Samples(d, student.input_names, fixed) for n, d in (("train", train), ("val", validation))}
    rng = np.random.default_rng(o.seed)
    prev: str | None = None
    s_vals: dict[str, torch.Tensor | None] = {"train": None, "val": None}
    t_vals: dict[str, torch.Tensor | None] = {"train": None, "val": None}
    for k, end in enumerate(ends):
        given = [prev] if prev is not None else []
        s_steps, t_steps = student.segment(given, [end]), teacher.segment(given, [end])
        t_new = {n: _propagate(teacher, t_steps, prev, end, t_vals[n], sets[n], batch) for n in sets}
        names = student.segment_params(s_steps)
        if names:
            budget = 0.0
            if o.max_cpu_seconds > 0:
                budget = (o.max_cpu_seconds - (time.process_time() - cpu_start)) / (len(ends) - k)
            record = _train_segment(student, s_steps, names, prev, end, s_vals, t_new, sets, rng, o, budget, fixed)
            result.segments.append(record)
            log.info("block-wise %s: %d steps, validation loss %.5f -> %.5f (%.0f CPU-s)", end, record.steps,
                     record.loss_before, record.loss_after, record.cpu_s)
        s_vals = {n: _propagate(student, s_steps, prev, end, s_vals[n], sets[n], batch) for n in sets}
        t_vals, prev = t_new, end
    student.write_back(student_ir)
    from sparsec.recover.finetune import check_masks

    check_masks(student_ir, student.masks_np)
    result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return result


def _train_segment(
    student: TorchGraph, steps: list, names: list[str], prev: str | None, end: str,
    s_vals: dict[str, torch.Tensor | None], targets: dict[str, torch.Tensor], sets: dict[str, _Samples],
    rng: np.random.Generator, o: BlockwiseOptions, cpu_budget: float, fixed: int | None,
) -> SegmentRecord:
    cpu0 = time.process_time()
    size = fixed or o.batch_size
    params = [student.params[student.param_key[n]] for n in names]
    train, val = sets["train"], sets["val"]

    def forward(which: str, idx: np.ndarray | slice) -> torch.Tensor:
        feeds, mask = sets[which].take(idx)
        vals = s_vals[which]
        given = {} if prev is None or vals is None else {prev: vals[idx]}
        out = student.run_segment(steps, given, feeds, [end])[0]
        return _nmse(out, targets[which][idx], mask)

    def val_loss() -> float:
        with torch.no_grad():
            losses = [float(forward("val", slice(i, i + (fixed or 64)))) for i in range(0, val.n, fixed or 64)]
        return float(np.mean(losses))

    per_epoch = max(1, train.n // size)
    total = max(1, int(round(o.epochs * per_epoch)))
    eval_at = {int(round(total * (i + 1) / o.evals)) for i in range(o.evals)}
    before = val_loss()
    best, best_state = before, [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=o.lr)
    order: list[int] = []
    first = last = float("nan")
    step = 0
    for step in range(1, total + 1):
        used = (time.process_time() - cpu0) / cpu_budget if cpu_budget > 0 else 0.0
        done = min(1.0, max(step / total, used))
        lr = o.lr * done / o.warmup if done < o.warmup else o.lr * 0.5 * (1 + math.cos(math.pi * (done - o.warmup) / (1 - o.warmup)))
        for g in optimizer.param_groups:
            g["lr"] = lr
        if len(order) < size:
            order += rng.permutation(train.n).tolist()
        idx, order = np.asarray(order[:size]), order[size:]
        loss = forward("train", idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = float(loss.detach())
        first = last if step == 1 else first
        out_of_time = cpu_budget > 0 and time.process_time() - cpu0 >= cpu_budget
        if step in eval_at or out_of_time:
            score = val_loss()
            if score < best:
                best, best_state = score, [p.detach().clone() for p in params]
        if out_of_time:
            break
    with torch.no_grad():
        for p, b in zip(params, best_state, strict=True):
            p.copy_(b)
    return SegmentRecord(end, sum(p.numel() for p in params), step, before, best, first, last, time.process_time() - cpu0)


__all__ = ["BlockwiseOptions", "BlockwiseResult", "blockwise_reconstruct"]
