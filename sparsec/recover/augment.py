"""Input augmentation for distillation: more distinct inputs from the same calibration samples.

Distillation needs no labels: the teacher scores whatever the student sees. With a few hundred
or thousand samples, fine-tuning on them alone overfits (the training loss falls while the
held-out fidelity barely moves); perturbed copies keep the inputs near the data while the
student sees a new set every step ("function matching" with consistent, aggressive
augmentation, Beyer et al. 2022; TinyBERT's augmented distillation). Generic rules, by input:

* integer token inputs (shaped like the row mask, more than two distinct values), by `mode`:
  - "replace": a fraction of the real tokens is replaced by tokens drawn from the calibration
    samples' own token frequencies;
  - "splice": the row becomes a new sequence spliced from real spans: copy a run of
    SPAN_MIN..SPAN_MAX tokens of some sample, then jump to another place where the last copied
    token occurs (any sample) and go on, until the row's real length is filled. Every bigram
    is one the data holds, but the sequences are new: far more distinct inputs than the
    samples, for distillation, which fits the teacher on whatever it sees;
  the first and last real token of a row are kept (BERT-style special tokens);
* float inputs: mixup with another sample of the batch, weight drawn from [MIX_LOW, 1];
* everything else (masks, type ids, shapes) as it is.

Each sample is augmented with probability `AUGMENTED_SHARE`; the rest stay as they are, so the
training distribution still holds the clean samples the model will see.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

TOKEN_RATE = 0.15
MIX_LOW = 0.5
AUGMENTED_SHARE = 0.5
SPAN_MIN, SPAN_MAX = 2, 8
MODES = ("replace", "splice", "vocab", "splice-vocab")


class Augmenter:
    """Draws augmented copies of batches of `arrays` (the training samples)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], row_mask: str | None, seed: int = 0,
                 mode: str = "replace", vocab_sizes: Mapping[str, int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"augment mode must be one of {', '.join(MODES)}, got '{mode}'")
        self.rng = np.random.default_rng(seed + 7919)
        self.row_mask = row_mask
        self.mode = mode
        self.vocab_sizes = dict(vocab_sizes or {})
        # splice: per token input, the real interior tokens of every sample (specials dropped)
        # and, per token value, every (sample, position) where it occurs.
        self.spans: dict[str, tuple[list[np.ndarray], dict[int, np.ndarray]]] = {}
        self.tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (values, probabilities)
        mask = arrays.get(row_mask) if row_mask is not None else None
        for name, a in arrays.items():
            if name == row_mask or mask is None or a.shape != mask.shape or not np.issubdtype(a.dtype, np.integer):
                continue
            real = a[np.asarray(mask) != 0]
            values, counts = np.unique(real, return_counts=True)
            if len(values) > 2:
                self.tokens[name] = (values, counts / counts.sum())
                if mode in ("splice", "splice-vocab"):
                    self.spans[name] = _span_index(a, np.asarray(mask) != 0)
        self.floats = [n for n, a in arrays.items() if np.issubdtype(a.dtype, np.floating) and n != row_mask]

    @property
    def active(self) -> bool:
        return bool(self.tokens or self.floats)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: np.array(v, copy=True) for k, v in batch.items()}
        n = next(iter(out.values())).shape[0]
        chosen = self.rng.random(n) < AUGMENTED_SHARE
        if not chosen.any():
            return out
        if self.tokens:
            assert self.row_mask is not None
            real = np.asarray(out[self.row_mask]) != 0
            editable = real.copy()
            # Keep the first and last real position of every row (special tokens).
            first = real.argmax(axis=1)
            last = real.shape[1] - 1 - real[:, ::-1].argmax(axis=1)
            rows = np.arange(n)
            editable[rows, first] = False
            editable[rows, last] = False
            editable &= chosen[:, None]
            for name, (values, probs) in self.tokens.items():
                if name in self.spans:
                    for r in np.flatnonzero(chosen):
                        where = np.flatnonzero(editable[r])
                        if where.size:
                            out[name][r, where] = self._splice(name, where.size).astype(out[name].dtype)
                    if self.mode == "splice":
                        continue
                hit = editable & (self.rng.random(editable.shape) < TOKEN_RATE)
                vocab = self.vocab_sizes.get(name) if self.mode in ("vocab", "splice-vocab") else None
                if vocab is not None:
                    drawn = self.rng.integers(0, vocab, size=int(hit.sum()))
                else:  # "replace", or no embedding table found for this input: the samples' own tokens
                    drawn = self.rng.choice(values, size=int(hit.sum()), p=probs)
                out[name][hit] = drawn.astype(out[name].dtype)
        if self.floats and n > 1:
            partner = self.rng.permutation(n)
            lam = np.where(chosen, self.rng.uniform(MIX_LOW, 1.0, n), 1.0)
            for name in self.floats:
                a = out[name]
                shape = (n,) + (1,) * (a.ndim - 1)
                out[name] = (lam.reshape(shape) * a + (1 - lam).reshape(shape) * a[partner]).astype(a.dtype)
        return out

    def _splice(self, name: str, length: int) -> np.ndarray:
        rows, occurrences = self.spans[name]
        picked: list[int] = []

        def anywhere() -> tuple[int, int]:
            r = int(self.rng.integers(len(rows)))
            return r, int(self.rng.integers(len(rows[r])))

        r, pos = anywhere()
        while len(picked) < length:
            run = rows[r][pos : pos + int(self.rng.integers(SPAN_MIN, SPAN_MAX + 1))]
            picked.extend(run.tolist())
            places = occurrences.get(int(run[-1]))
            if places is None or len(places) < 2:  # a dead end: start again anywhere
                r, pos = anywhere()
                continue
            r, pos = (int(v) for v in places[int(self.rng.integers(len(places)))])
            pos += 1  # continue after the shared token
            if pos >= len(rows[r]):
                r, pos = anywhere()
        return np.asarray(picked[:length])


_VALUE_KEEPING = ("Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


def vocab_sizes(model: ir.Model) -> dict[str, int]:
    """Per integer graph input that indexes an embedding table (a Gather of a constant, maybe
    behind casts and reshapes), the table's row count: the range "vocab" augmentation draws from."""
    sizes: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        frontier = [value]
        while frontier:
            v = frontier.pop()
            for node, index in v.uses():
                if node.op_type in _VALUE_KEEPING and index == 0 and node.outputs:
                    frontier.append(node.outputs[0])
                elif node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
                    table = node.inputs[0].const_value
                    if table is not None and len(table.shape) == 2 and node.attributes.get_int("axis", 0) == 0:
                        sizes[value.name] = max(sizes.get(value.name, 0), int(table.shape[0]))
    return sizes


def _span_index(tokens: np.ndarray, real: np.ndarray) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    rows = [t[m][1:-1] for t, m in zip(tokens, real, strict=True)]
    rows = [r for r in rows if len(r) > 0]
    places: dict[int, list[tuple[int, int]]] = {}
    for i, r in enumerate(rows):
        for j, t in enumerate(r.tolist()):
            places.setdefault(t, []).append((i, j))
    return rows, {t: np.asarray(v) for t, v in places.items()}


__all__ = ["MODES", "Augmenter", "vocab_sizes"]
