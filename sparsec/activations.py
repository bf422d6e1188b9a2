"""Run any IR on calibration data with chosen weights and read layer inputs out of it.

The model is lowered to reference ONNX once; the prunable weights become graph inputs (so
trial weights are fed per run, with no session rebuild) and every layer's activation input
becomes an extra graph output. This is what layer statistics, sequential reconstruction
and the sensitivity scan run on, for any ONNX graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparsec.calibration import CalibrationData
from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import to_proto
from sparsec.layer_view import LayerView
from sparsec.numerics import make_session


class ActivationRunner:
    def __init__(self, model: ir.Model, views: Sequence[LayerView], calib: CalibrationData, threads: int = 2) -> None:
        calib.check_against(model)
        self.calib = calib
        self.views = list(views)
        copy = ir.serde.deserialize_model(to_proto(model))
        lower_to_reference(copy)
        self.output_names = [v.name for v in copy.graph.outputs]
        self.weight_names = sorted({v.layer.weight.name for v in self.views})
        self.base_weights = {
            name: model.graph.initializers[name].const_value.numpy() for name in self.weight_names
        }
        for name in self.weight_names:
            value = copy.graph.initializers.pop(name)
            value.const_value = None
            copy.graph.inputs.append(value)
        values = {v.name: v for n in copy.graph for v in n.outputs}
        values.update({v.name: v for v in copy.graph.inputs})
        existing = set(self.output_names)
        for view in self.views:
            name = view.input_name
            if name is None or name in existing:
                continue
            value = values[name]
            if value.type is None:  # ORT needs a type on graph outputs
                value.type = ir.TensorType(ir.DataType.FLOAT)
            copy.graph.outputs.append(value)
            existing.add(name)
        self.threads = threads
        self._model = copy
        self.session = make_session(to_proto(copy).SerializeToString(), threads)
        self._prefix_sessions: dict[tuple[str, ...], Any] = {}

    def _prefix_session(self, names: tuple[str, ...]) -> Any:
        """A session computing only what `names` depend on (ORT runs the whole graph otherwise).

        Sequential pruning asks for the inputs of one stage at a time: early stages then
        cost a fraction of a full forward pass.
        """
        if names not in self._prefix_sessions:
            copy = ir.serde.deserialize_model(to_proto(self._model))
            values = {v.name: v for n in copy.graph for v in n.outputs}
            values.update({v.name: v for v in copy.graph.inputs})
            copy.graph.outputs.clear()
            copy.graph.outputs.extend(values[n] for n in names)
            RemoveUnusedNodesPass()(copy)
            self._prefix_sessions[names] = make_session(to_proto(copy).SerializeToString(), self.threads)
        return self._prefix_sessions[names]

    def _feeds(self, batch: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        feeds = dict(batch)
        for name in self.weight_names:
            w = (weights or {}).get(name)
            feeds[name] = w if w is not None else self.base_weights[name]
        return feeds

    def layer_inputs(
        self, views: Sequence[LayerView], weights: dict[str, np.ndarray] | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch: layer name -> X2 rows, with `weights` overriding the model's."""
        wanted = [v for v in views if v.input_name is not None]
        names = sorted({v.input_name for v in wanted})  # type: ignore[misc]
        if not names:
            return
        session = self._prefix_session(tuple(names))
        needed = {i.name for i in session.get_inputs()}
        for batch in self.calib.batches():
            feeds = {k: v for k, v in self._feeds(batch, weights).items() if k in needed}
            outs = dict(zip(names, session.run(names, feeds), strict=True))
            yield {v.name: v.rows(outs[v.input_name]) for v in wanted}  # type: ignore[index]

    def outputs(self, weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The model's outputs over all calibration samples (concatenated on axis 0)."""
        parts: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for batch in self.calib.batches():
            for i, out in enumerate(self.session.run(self.output_names, self._feeds(batch, weights))):
                parts[i].append(out)
        return [np.concatenate(p, axis=0) for p in parts]


def output_damage(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """1 - mean cosine similarity over output rows (last axis as the vector), worst output.

    For small, independent perturbations this adds up over layers (each layer's error adds
    its squared norm to the output error), which is what allocation relies on.
    """
    worst = 0.0
    for a, b in zip(reference, candidate, strict=True):
        a2 = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1] if a.ndim else 1)
        b2 = np.asarray(b, dtype=np.float64).reshape(a2.shape)
        num = np.sum(a2 * b2, axis=1)
        den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
        cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
        worst = max(worst, float(1.0 - cos.mean()))
    return worst
