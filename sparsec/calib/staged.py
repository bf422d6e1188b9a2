"""Run a model stage by stage, so that only one stage's weights are ever in memory.

The graph (in its stored, topological order) is cut into stages whose weights fit
`stage_bytes`. Each stage becomes a small ONNX Runtime session built from its own weights
(`sparsec.ir.session`: handed to ORT by reference, no pre-packed copy), runs over every
batch, and is released; the values crossing into later stages (the frontier, kept per
batch) are its outputs. The results equal a whole-model session's: same ops, same inputs,
only the session boundaries differ.

Works on any model ONNX Runtime can run: the reference-lowered IR (fidelity, pass
numerics) and the backend's compiled model with sparsec kernels (registered per stage).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.ir.session import proto_with_external_weights
from sparsec.memory import current_budget

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Stage:
    start: int  # node index range [start, stop) of the graph
    stop: int
    weight_bytes: int


def _used_names(node: onnx.NodeProto) -> set[str]:
    """Every value name a node reads, outer-scope names of its subgraphs included."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for g in graphs:
            inner = {n.name for n in g.initializer} | {i.name for i in g.input}
            for sub in g.node:
                inner |= set(sub.output)
            for sub in g.node:
                names |= _used_names(sub) - inner
            names |= {o.name for o in g.output} - inner
    return names


class StagedModel:
    """`model` cut into stages of at most `stage_bytes` of weights (a bigger single node is one stage)."""

    def __init__(self, model: ir.Model, stage_bytes: int, threads: int = 2) -> None:
        self.model = model
        self.threads = threads
        # Placeholders for the weights: the proto is small and nothing is read yet.
        self.proto, _ = _placeholder_proto(model)
        graph = self.proto.graph
        self.nodes = list(graph.node)
        self.sizes = {v.name: v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None}
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.uses = [_used_names(n) for n in self.nodes]
        self.types = _value_types(model, self.proto)
        self.stages = self._cut(stage_bytes)
        last_use: dict[str, int] = {}
        for i, used in enumerate(self.uses):
            for name in used:
                last_use[name] = i
        for name in self.graph_outputs:
            last_use[name] = len(self.nodes)
        self.last_use = last_use

    def _cut(self, stage_bytes: int) -> list[Stage]:
        stages: list[Stage] = []
        start, total, seen = 0, 0, set()
        for i, used in enumerate(self.uses):
            new = {n for n in used if n in self.initializers and n not in seen}
            size = sum(self.sizes.get(n, 0) for n in new)
            if i > start and total + size > stage_bytes:
                stages.append(Stage(start, i, total))
                start, total, seen = i, 0, set()
                new = {n for n in used if n in self.initializers}
                size = sum(self.sizes.get(n, 0) for n in new)
            seen |= new
            total += size
        stages.append(Stage(start, len(self.nodes), total))
        return stages

    def _stage_proto(self, stage: Stage, inputs: Sequence[tuple[str, np.ndarray]]) -> tuple[onnx.ModelProto, list[str], list[str]]:
        nodes = self.nodes[stage.start : stage.stop]
        made = {o for n in nodes for o in n.output if o}
        used = set().union(*self.uses[stage.start : stage.stop]) if nodes else set()
        weights = sorted(n for n in used if n in self.initializers and n not in made)
        outputs = sorted(
            name for name in made
            if self.last_use.get(name, -1) >= stage.stop or name in self.graph_outputs
        )
        fed = {name for name, _ in inputs}
        graph = onnx.helper.make_graph(
            nodes, f"stage_{stage.start}",
            [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), None)
             for name, a in inputs if name in used],
            [onnx.helper.make_tensor_value_info(name, self.types.get(name, onnx.TensorProto.FLOAT), None) for name in outputs],
            [self.initializers[n] for n in weights],
        )
        missing = used - made - fed - set(weights)
        if missing:
            raise RuntimeError(f"stage {stage.start}-{stage.stop}: values {sorted(missing)[:3]} are not available")
        proto = onnx.helper.make_model(graph, opset_imports=list(self.proto.opset_import), ir_version=self.proto.ir_version)
        proto.functions.extend(self.proto.functions)
        return proto, weights, outputs

    def _session(self, proto: onnx.ModelProto, weights: list[str]) -> object:
        import onnxruntime as ort

        from sparsec.ir.session import options_with_weights
        from sparsec.runtime import KERNEL_DOMAIN

        custom = any(n.domain == KERNEL_DOMAIN for n in proto.graph.node)
        arrays = {}
        for name in weights:
            if _is_placeholder(self.initializers[name]):
                arrays[name] = np.ascontiguousarray(self.model.graph.initializers[name].const_value.numpy())
        if custom:
            from sparsec.backends.ort.sparse_ops import make_session, session_options

            opts = session_options(self.threads, None)
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
        opts.add_session_config_entry("session.disable_prepacking", "1")
        keep = options_with_weights(opts, arrays)
        data = proto.SerializeToString()
        if custom:
            session = make_session(data, threads=self.threads, options=opts)
        else:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        del keep, arrays  # ORT copied them (sparsec.ir.session)
        return session

    def run(self, batches: Iterable[Feeds], outputs: Sequence[str] | None = None) -> Iterator[list[np.ndarray]]:
        """Per batch, the model's outputs (or the named values), computed stage by stage."""
        wanted = list(outputs or self.graph_outputs)
        # Cyclic garbage of earlier work (the IR copy a previous check lowered, with the weights
        # it made) goes before this run's weights come in, where the budget is tight (a model
        # that streams); within the budget, the collector's own pace is enough, and a full
        # collection of a compile's heap takes 60-140 ms (BERT-base: 4 runs, 0.45 s). Within
        # the run, sessions are freed by their last reference (below).
        if current_budget().streams(sum(self.sizes.values())):
            gc.collect()
        frontier: list[Feeds] = [dict(b) for b in batches]
        collected: list[Feeds] = [{} for _ in frontier]
        for stage in self.stages:
            if not frontier:
                break
            sample = frontier[0]
            proto, weights, outs = self._stage_proto(stage, sorted(sample.items()))
            session = self._session(proto, weights)
            needed = [i.name for i in session.get_inputs()]
            for i, values in enumerate(frontier):
                results = dict(zip(outs, session.run(outs, {k: values[k] for k in needed}), strict=True))
                for name in wanted:
                    if name in results:
                        collected[i][name] = results[name]
                keep = {k: v for k, v in values.items() if self.last_use.get(k, -1) >= stage.stop or k in self.graph_inputs}
                keep.update({k: v for k, v in results.items() if self.last_use.get(k, -1) >= stage.stop})
                frontier[i] = keep
            # Freed here by its last reference; another full collection (~80 ms on a compile-sized
            # heap, 14 stages per BERT-base compile) only when a reference cycle still holds it.
            alive = weakref.ref(session)
            del session
            if alive() is not None:
                gc.collect()
        for i, values in enumerate(collected):
            missing = [n for n in wanted if n not in values]
            for name in missing:  # a graph input passed through as an output
                values[name] = frontier[i][name]
            yield [values[n] for n in wanted]


def _placeholder_proto(model: ir.Model) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model's proto with every large initializer as a placeholder, without reading any."""
    return proto_with_external_weights(model, read=False)


def _value_types(model: ir.Model, proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value: from the IR, else from ONNX shape inference (stage outputs
    need one; ORT refuses an untyped graph output)."""
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            if info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
    except Exception:  # noqa: BLE001 - inference is a fallback only; the IR's types come first
        pass
    for node in model.graph:
        for v in node.outputs:
            if v.dtype is not None:
                types[v.name] = int(v.dtype)
    return types


def _is_placeholder(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def run_staged(model: ir.Model, batches: Iterable[Feeds], stage_bytes: int, threads: int = 2) -> list[np.ndarray]:
    """The outputs of `model` over `batches` (concatenated on axis 0), stage by stage."""
    parts: list[list[np.ndarray]] = []
    for outs in StagedModel(model, stage_bytes, threads).run(batches):
        for i, out in enumerate(outs):
            if i == len(parts):
                parts.append([])
            parts[i].append(np.asarray(out))
    return [np.concatenate(p, axis=0) for p in parts]


__all__ = ["Stage", "StagedModel", "run_staged"]
