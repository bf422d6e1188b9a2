"""The one place that runs a model on calibration data.

`CalibrationRunner` lowers the model to reference ONNX once, feeds the chosen initializers
(the prunable weights, and any `params` such as biases or norm parameters) as graph inputs
so trial weights need no new session, and exposes any set of intermediate values per
calibration batch: `values(names)` yields, batch by batch, only what was asked for (a
session per requested set computes just what those values depend on, so a caller can walk a
model stage by stage, and later layer by layer). Batches have the model's own batch size
(`CalibrationData.batches_for`): a static batch-1 export is fed one sample at a time. With
a row mask (`CalibrationData.row_mask`, e.g. an attention mask) values can be reduced to
their real rows.

Layer statistics (`sparsec.calib.stats`), sequential reconstruction, the sensitivity scans,
allocation, crop calibration and the compiler's held-out fidelity all run through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparsec.calib.data import CalibrationData
from sparsec.dialect.reference import lower_to_reference
from sparsec.errors import PipelineError
from sparsec.ir.session import session_from_ir
from sparsec.layer_view import LayerView

Feeds = dict[str, np.ndarray]


class CalibrationRunner:
    def __init__(
        self, model: ir.Model, calib: CalibrationData, *, views: Sequence[LayerView] = (), params: Sequence[str] = (), threads: int = 2
    ) -> None:
        """`views`: layers whose weights are fed per run (and whose inputs `layer_inputs`
        returns); `params`: more initializers (biases, norm parameters) fed per run."""
        calib.check_against(model)
        self.calib = calib
        self.views = list(views)
        # A structural copy sharing the weights (file-backed ones stay on disk until a
        # session reads them): never the whole model loaded at once.
        copy = model.clone()
        lower_to_reference(copy)
        self.output_names = [v.name for v in copy.graph.outputs]
        self.weight_names = sorted({v.layer.weight.name for v in self.views} | set(params))
        # Read when a run needs them (one stage's worth at a time), not all up front.
        self._base_tensors = {name: model.graph.initializers[name].const_value for name in self.weight_names}
        for name in self.weight_names:
            value = copy.graph.initializers.pop(name)
            value.const_value = None
            copy.graph.inputs.append(value)
        self.threads = threads
        self._model = copy
        self._source = model
        self._sessions: dict[tuple[str, ...], Any] = {}

    # -- batches -------------------------------------------------------------------------
    def batches(self) -> Iterator[Feeds]:
        """The calibration batches, sized for the model (its fixed batch, else the data's)."""
        return self.calib.batches_for(self._source)

    def _session(self, names: tuple[str, ...]) -> Any:
        """A session computing only `names` and what they depend on."""
        if names not in self._sessions:
            self._sessions[names] = _partial_session(self._model, names, self.threads)
        return self._sessions[names]

    @property
    def base_weights(self) -> dict[str, np.ndarray]:
        """Every fed weight's original value (reads them all: for small models and tests)."""
        return {name: self.base_weight(name) for name in self.weight_names}

    def base_weight(self, name: str) -> np.ndarray:
        return self._base_tensors[name].numpy()

    def weight_feeds(self, needed: set[str], weights: dict[str, np.ndarray] | None) -> Feeds:
        """The fed weights among `needed`: `weights` where given, else the model's (read now)."""
        feeds = {}
        for name in self.weight_names:
            if name in needed:
                w = (weights or {}).get(name)
                feeds[name] = w if w is not None else self.base_weight(name)
        return feeds

    def _feeds(self, batch: Feeds, weights: dict[str, np.ndarray] | None) -> Feeds:
        return {**batch, **self.weight_feeds(set(self.weight_names), weights)}

    def _run(self, names: Sequence[str], weights: dict[str, np.ndarray] | None) -> Iterator[tuple[Feeds, dict[str, np.ndarray]]]:
        key = tuple(dict.fromkeys(names))
        if not key:
            return
        session = self._session(key)
        needed = {i.name for i in session.get_inputs()}
        fed = self.weight_feeds(needed, weights)  # read once for all batches
        for batch in self.batches():
            feeds = {k: v for k, v in {**batch, **fed}.items() if k in needed}
            yield batch, dict(zip(key, session.run(list(key), feeds), strict=True))

    # -- what callers read -----------------------------------------------------------------
    def values(
        self, names: Sequence[str], weights: dict[str, np.ndarray] | None = None, *, real_rows: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch: value name -> array, with `weights` overriding the model's.

        `real_rows`: where the calibration data has a row mask and a value has its leading
        dims, return only the real tokens' rows of it ([rows, features]).
        """
        for batch, outs in self._run(names, weights):
            if real_rows:
                for name, x in outs.items():
                    rows = self.calib.select_rows(batch, x)
                    outs[name] = x if rows is None else rows
            yield outs

    def concatenated(self, names: Sequence[str], weights: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The named values over all calibration samples (batches concatenated on axis 0)."""
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for outs in self.values(names, weights):
            for name, x in outs.items():
                parts[name].append(x)
        return {n: np.concatenate(p, axis=0) for n, p in parts.items()}

    def layer_inputs(self, views: Sequence[LayerView], weights: dict[str, np.ndarray] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch: layer name -> X2 rows (real tokens only, for a MatMul on
        token activations when the data has a row mask), with `weights` overriding the model's."""
        wanted = [v for v in views if v.input_name is not None]
        for batch, outs in self._run([v.input_name for v in wanted], weights):  # type: ignore[misc]
            yield {v.name: self.view_rows(v, batch, outs[v.input_name]) for v in wanted}  # type: ignore[index]

    def view_rows(self, view: LayerView, batch: Feeds, x: np.ndarray) -> np.ndarray:
        """The layer's X2 rows from its input activation `x` (real tokens only where the
        calibration data has a row mask and `x` is a MatMul input with the mask's leading dims)."""
        masked = self.calib.select_rows(batch, x) if view.layer.node.op_type == "MatMul" else None
        return view.rows(masked if masked is not None else x)

    def outputs(self, weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The model's outputs over all calibration samples (concatenated on axis 0)."""
        found = self.concatenated(self.output_names, weights)
        return [found[n] for n in self.output_names]

    def output_rows(self) -> list[np.ndarray | None]:
        """Per graph output: the row mask (real rows) over all samples, for the metrics, or None."""
        return output_rows(self.calib, self.batches(), len(self.output_names))


def output_rows(calib: CalibrationData, batches: Iterable[Feeds], count: int) -> list[np.ndarray | None]:
    if calib.row_mask is None:
        return [None] * count
    mask = np.concatenate([np.asarray(b[calib.row_mask]) != 0 for b in batches], axis=0)
    return [mask] * count


def run_outputs(model: ir.Model, calib: CalibrationData, *, threads: int = 2) -> list[np.ndarray]:
    """The outputs of `model` (any IR, reference-lowered) over all calibration samples."""
    return CalibrationRunner(model, calib, threads=threads).outputs()


def run_values(model: ir.Model, calib: CalibrationData, names: Sequence[str], *, threads: int = 2) -> dict[str, np.ndarray]:
    """Intermediate values of `model` over all calibration samples (batches concatenated)."""
    return CalibrationRunner(model, calib, threads=threads).concatenated(list(names))


def run_callable(run: Callable[[Feeds], list[np.ndarray]], batches: Iterable[Feeds]) -> list[np.ndarray]:
    """Outputs of an already-built runnable (e.g. a backend's compiled model) over `batches`,
    concatenated: for models the reference lowering cannot express."""
    parts: list[list[np.ndarray]] = []
    for batch in batches:
        for i, out in enumerate(run(batch)):
            if i == len(parts):
                parts.append([])
            parts[i].append(np.asarray(out))
    return [np.concatenate(p, axis=0) for p in parts]


Store = list[dict[str, np.ndarray]]  # per calibration batch: value name -> array


class SegmentWalk:
    """Sequential collection in one forward sweep: run the graph segment by segment.

    Segment k ends where the first layer of stage k starts (in graph order), so the values
    crossing that cut (the frontier, kept per calibration batch) hold every input of stage k.
    Once stage k is pruned, the next segment runs from the frontier with the new weights:
    the whole walk costs about one forward pass per model (dense and pruned) instead of one
    prefix pass per stage. `SegmentWalk.plan` returns None where stages interleave in graph
    order; callers then fall back to the runner's prefix passes.
    """

    def __init__(self, runner: CalibrationRunner, cuts: list[int]) -> None:
        self.runner = runner
        self.cuts = cuts  # node index where each stage's first layer sits; len(nodes) appended
        self.nodes = list(runner._model.graph)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self._sessions: dict[tuple[int, tuple[str, ...]], Any] = {}
        last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if v is not None:
                    last_use[v.name] = i
        for v in runner._model.graph.outputs:
            last_use[v.name] = len(self.nodes)
        self.last_use = last_use
        # Values computed from the calibration inputs. Only these are carried across a cut;
        # the rest (a weight's Transpose, constants) is recomputed in each segment from the
        # weights fed to it, so a pruned weight reaches every use of it.
        data = {v.name for v in runner._model.graph.inputs if v.name not in set(runner.weight_names)}
        for node in self.nodes:
            if any(v is not None and v.name in data for v in node.inputs):
                data.update(v.name for v in node.outputs)
        self.data_values = data

    @classmethod
    def plan(cls, runner: CalibrationRunner, stages: Sequence[Sequence[LayerView]]) -> SegmentWalk | None:
        position = {}
        for i, node in enumerate(runner._model.graph):
            for out in node.outputs:
                position[out.name] = i
        cuts = []
        for stage in stages:
            places = [position.get(v.layer.node.outputs[0].name) for v in stage]
            if any(p is None for p in places):
                return None
            cuts.append(min(places))  # type: ignore[type-var]
        ends = [max(position[v.layer.node.outputs[0].name] for v in stage) for stage in stages]
        # Every layer of stage k must sit before the first layer of stage k+1.
        if any(ends[k] >= cuts[k + 1] for k in range(len(stages) - 1)):
            return None
        return cls(runner, [*cuts, len(list(runner._model.graph))])

    def _frontier(self, cut: int) -> list[str]:
        """Data-dependent values made before node `cut` and used at or after it."""
        return sorted(
            {
                v.name
                for n in self.nodes[:cut]
                for v in n.outputs
                if v.name in self.data_values and self.last_use.get(v.name, -1) >= cut
            }
        )

    def _session(self, segment: int, outputs: tuple[str, ...], store: Store) -> Any:
        key = (segment, outputs)
        if key not in self._sessions:
            start = self.cuts[segment - 1] if segment > 0 else 0
            carried = {name: x.dtype for name, x in (store[0] if store else {}).items()}
            self._sessions[key] = _partial_session(self.runner._model, outputs, self.runner.threads,
                                                   start=start, carried=carried)
        return self._sessions[key]

    def run(self, segment: int, store: Store, weights: dict[str, np.ndarray] | None, extra: Sequence[str] = ()) -> Store:
        """Run segment `segment` (0: from the graph inputs to the first stage) on `store` (the
        frontier before it); returns the frontier after it plus the `extra` values asked for."""
        stop = self.cuts[segment]
        keep = self._frontier(stop)
        made_here = {v.name for n in self.nodes[(self.cuts[segment - 1] if segment > 0 else 0) : stop] for v in n.outputs}
        outputs = tuple(sorted((set(keep) | set(extra)) & made_here))
        session = self._session(segment, outputs, store) if outputs else None
        needed = {i.name for i in session.get_inputs()} if session is not None else set()
        result: Store = []
        fed = self.runner.weight_feeds(needed, weights)  # this segment's weights, read once
        for i, batch in enumerate(self.runner.batches()):
            before = store[i] if store else {}
            feeds = {k: v for k, v in {**batch, **fed, **before}.items() if k in needed}
            outs = dict(zip(outputs, session.run(list(outputs), feeds), strict=True)) if session is not None else {}
            carried = {k: v for k, v in before.items() if k in keep and k not in outs}
            result.append({**carried, **outs})
        return result

    def rows(self, store: Store, views: Sequence[LayerView]) -> Iterator[dict[str, np.ndarray]]:
        """Per batch: layer name -> X2 rows of `views` from a frontier that holds their inputs."""
        for batch, values in zip(self.runner.batches(), store, strict=True):
            yield {v.name: self.runner.view_rows(v, batch, _lookup(values, batch, v.input_name)) for v in views if v.input_name is not None}

    def values(self, store: Store, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Per batch: the real-token rows of the named values."""
        for batch, values in zip(self.runner.batches(), store, strict=True):
            out = {}
            for name in names:
                x = _lookup(values, batch, name)
                rows = self.runner.calib.select_rows(batch, x)
                out[name] = x if rows is None else rows
            yield out


def _lookup(values: dict[str, np.ndarray], batch: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A frontier value, or a graph input (graph inputs are fed, never part of a frontier)."""
    return values[name] if name in values else batch[name]


def _partial_session(model: ir.Model, outputs: Sequence[str], threads: int, *, start: int = 0,
                     carried: dict[str, np.dtype] | None = None) -> Any:
    """A session on a copy of `model` computing only `outputs` and what they depend on (ORT
    runs the whole graph otherwise). Values made by the first `start` nodes that are named in
    `carried` (name -> dtype) become graph inputs, so a segment runs from a stored frontier."""
    copy = model.clone()
    for node in list(copy.graph)[:start]:
        for value in node.outputs:
            if value.name not in (carried or {}):
                continue
            fresh = ir.Value(name=value.name, type=ir.TensorType(ir.DataType.from_numpy(carried[value.name])))
            value.name = f"{value.name}__before_cut"
            value.replace_all_uses_with(fresh)
            copy.graph.inputs.append(fresh)
    values = {v.name: v for n in copy.graph for v in n.outputs}
    values.update({v.name: v for v in copy.graph.inputs})
    copy.graph.outputs.clear()
    for name in outputs:
        if name not in values:
            raise PipelineError(f"calibration: the model has no value named '{name}'")
        if values[name].type is None:  # ORT needs a type on graph outputs
            values[name].type = ir.TensorType(ir.DataType.FLOAT)
        copy.graph.outputs.append(values[name])
    RemoveUnusedNodesPass()(copy)
    _drop_unused_inputs(copy)
    return session_from_ir(copy, threads, lean=True)


def _drop_unused_inputs(model: ir.Model) -> None:
    """Remove graph inputs nothing reads: the fed weights are graph inputs, and ORT wants
    every declared input fed, so a session for one segment would otherwise read (and hold)
    every weight of the model on each run."""
    graph = model.graph
    keep = [v for v in graph.inputs if v.uses() or v.is_graph_output()]
    if len(keep) != len(graph.inputs):
        graph.inputs.clear()
        graph.inputs.extend(keep)
