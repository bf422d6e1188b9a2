"""N:M convolutions on sparsec's NCHWc kernel inside ONNX Runtime's own NCHWc layout.

ONNX Runtime runs a CNN's convolutions in NCHW16c (its NCHWc transformer, on AVX-512). A sparse
conv op in NCHW (`lower-conv-kernels`) breaks that chain: ORT puts a reorder on each side of
it, and on ResNet-50 and MobileNetV2 those reorders cost what the sparse conv saved. Here ORT
lays the model out first (its optimized model, saved), and each `com.microsoft.nchwc` Conv
whose weight keeps on average at most MAX_PAIRS of every 16 input channels in the fullest lane
of a block (2:4, 4:8: 8; 1:4: 4; unstructured 80%: ~6) becomes
`com.sparsec.kernels.SparseConvNchwc` on the same NCHWc tensors: no
reorders, and ORT keeps its fusions (bias, residual add, ReLU/Clip) as the op's inputs and
attributes.

A depthwise conv whose output only such a 1x1 conv reads runs inside it (`fuse_depthwise`,
backends/ort/nchwc_dw_fusion.py) where the fused op measured faster than the two it replaces.

The result is for the machine it was laid out on (ORT writes that warning too): NCHWc block
16 and AVX-512. Each replaced conv is timed against the dense NCHWc conv it replaces (ORT's
profiler, both models in one process); convs the kernel does not beat go back to dense.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    from sparsec.backends.ort.nchwc_dw_fusion import DepthwiseFusion

NCHWC_DOMAIN = "com.microsoft.nchwc"
OP = "SparseConvNchwc"
BLOCK = 16
# Activations ORT fuses into an NCHWc Conv that the kernel applies too.
ACTIVATIONS = {"": 0, "Relu": 1, "Clip": 2}
# A conv goes sparse only if its node time beats dense by this factor (profiler noise) and by
# this much time: the profiler's node times leave out what ORT spends around a custom op call,
# and MobileNet-sized convs gain less than that.
MIN_GAIN = 1.02
MIN_GAIN_MS = 0.01
# Node times are profiled in this many interleaved rounds (dense, sparse, dense, ...) and each
# node keeps its fastest round: this machine has bursts of seconds where everything runs ~1.5x
# slower, and one burst in one profile decided which of ResNet-50's convs went sparse (43-52 of
# 52 between compiles, 1.17-1.30x).
PROFILE_ROUNDS = 2
# Then the whole model, sparse convs against none, side by side: kept only if faster by this
# factor; else once more with the convs that gained at least RETRY_GAIN, else none. A gain of a
# few percent does not survive contention: in this machine's slow bursts the kernel ops lose
# more than MLAS's convs (DenseNet's 6 sparse convs: 1.01-1.02x quiet, 0.96x in a burst), so a
# model keeps them only for 5%.
MODEL_GAIN = 1.05
RETRY_GAIN = 1.15
# Pairs per block (of 16 input channels) beyond which the kernel cannot win: a pair (permute +
# FMA) costs ~1.3-1.5 of MLAS's broadcast FMAs on AMD Zen 4, so ~10.7 is break-even.
MAX_PAIRS = 10.0


@dataclass
class ConvChoice:
    node: str
    shape: list[int]  # cout, cin, kh, kw
    strides: list[int]
    k: float  # pairs per block of 16 input channels, mean (the kernel's work per dense 16)
    mask_key: str = ""  # the weight's zero pattern (mask_key): ORT renames weights, BN fusion keeps zeros
    dense_ms: float | None = None
    sparse_ms: float | None = None
    sparse: bool = False
    reason: str = ""
    depthwise: str = ""  # the depthwise conv run inside this one (nchwc_dw_fusion), if any
    depthwise_ms: float | None = None  # its dense node time, unfused
    fused_ms: float | None = None  # this conv's node time with the depthwise inside


@dataclass
class NchwcLowering:
    model: bytes
    convs: list[ConvChoice] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # nchwc Convs not eligible, by reason
    end_to_end: list[dict[str, Any]] = field(default_factory=list)  # the whole-model checks

    @property
    def lowered(self) -> int:
        return sum(c.sparse for c in self.convs)

    @property
    def depthwise_fused(self) -> int:
        return sum(bool(c.depthwise) for c in self.convs)

    def to_dict(self) -> dict[str, Any]:
        return {"lowered": self.lowered, "depthwise_fused": self.depthwise_fused, "candidates": len(self.convs), "skipped": self.skipped,
                "end_to_end": self.end_to_end, "convs": [asdict(c) for c in self.convs]}


def nchwc_available() -> bool:
    from sparsec import kernels as sk

    return sk.kernels_available() and "avx512" in sk.available_isas()


def ort_nchwc_model(model: bytes, threads: int = 2) -> onnx.ModelProto:
    """ONNX Runtime's optimized model (all levels: NCHWc layout, fusions) as it saves it."""
    import onnxruntime as ort

    from sparsec.backends.ort.sparse_ops import session_options

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "opt.onnx")
        so = session_options(threads)  # the model may hold other sparsec kernel ops already
        so.optimized_model_filepath = path
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.log_severity_level = 3  # ORT warns that the saved layout is for this machine: that is the point
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def mask_key(w: np.ndarray) -> str:
    """A conv weight's shape and zero pattern, hashed: the same before and after ORT fuses a
    BatchNorm into it (a per-output-channel scale) and lays it out, so it names the source conv."""
    import hashlib

    h = hashlib.sha256(str(w.shape).encode())
    h.update(np.packbits(w != 0).tobytes())
    return h.hexdigest()[:16]


def _dense_weight(reordered: np.ndarray) -> np.ndarray:
    """ORT's OIHWBiBo weight ([O/16][I/16][KH][KW][16 i][16 o], dims [O, I, KH, KW]) as OIHW."""
    co, ci, kh, kw = reordered.shape
    blocked = reordered.reshape(co // BLOCK, ci // BLOCK, kh, kw, BLOCK, BLOCK)
    return np.ascontiguousarray(blocked.transpose(0, 5, 1, 4, 2, 3).reshape(co, ci, kh, kw))


def _sparse_node(node: onnx.NodeProto, a: dict[str, Any], packed: Any, names: tuple[str, str, str]) -> onnx.NodeProto:
    has_sum = len(node.input) > 3 and node.input[3] != ""
    inputs = [node.input[0], names[0], names[1], node.input[2] if len(node.input) > 2 else "",
              node.input[3] if has_sum else "", names[2]]
    strides, pads, dil = a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]), a.get("dilations", [1, 1])
    clip = list(a.get("activation_params", [])) or [0.0, 6.0]
    return helper.make_node(
        OP, inputs, list(node.output), name=node.name, domain="com.sparsec.kernels",
        cout=packed.cout, cin=packed.cin, kh=packed.kh, kw=packed.kw, k=packed.k, stride_h=strides[0],
        stride_w=strides[1], pad_t=pads[0], pad_l=pads[1], pad_b=pads[2], pad_r=pads[3], dil_h=dil[0], dil_w=dil[1],
        act=ACTIVATIONS[a.get("activation", "")], has_bias=int(len(inputs) > 3 and inputs[3] != ""),
        has_sum=int(has_sum), has_offs=1, clip_lo=float(clip[0]), clip_hi=float(clip[1]))


def _candidates(m: onnx.ModelProto) -> tuple[dict[str, tuple[Any, onnx.NodeProto, str]], dict[str, int]]:
    """Per nchwc Conv the kernel can run: (packed weight, replacement node); and why others can't."""
    from sparsec.kernels.packing_nchwc import pack_nchwc

    inits = {i.name: i for i in m.graph.initializer}
    found: dict[str, tuple[Any, onnx.NodeProto, str]] = {}
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for node in m.graph.node:
        if node.domain != NCHWC_DOMAIN or node.op_type != "Conv":
            continue
        a = node_attrs(node)
        if a.get("group", 1) != 1:
            skip("grouped or depthwise")
            continue
        if node.input[1] not in inits or len(inits[node.input[1]].dims) != 4:
            skip("weight not a constant")
            continue
        dims = list(inits[node.input[1]].dims)
        if dims[0] % BLOCK or dims[1] % BLOCK:
            skip("input not in NCHWc blocks (the stem)")
            continue
        if a.get("activation", "") not in ACTIVATIONS:
            skip(f"fused activation {a['activation']}")
            continue
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            skip("auto_pad")
            continue
        dense = _dense_weight(numpy_helper.to_array(inits[node.input[1]]))
        packed = pack_nchwc(dense)
        if packed.kept_fraction * BLOCK > MAX_PAIRS:
            skip(f"denser than {MAX_PAIRS:g} pairs per 16 input channels")
            continue
        base = node.name or node.output[0]
        names = (f"{base}_nchwc_idx", f"{base}_nchwc_vals", f"{base}_nchwc_offs")
        found[node.output[0]] = (packed, _sparse_node(node, a, packed, names), mask_key(dense))
    return found, skipped


def _with(m: onnx.ModelProto, chosen: dict[str, tuple[Any, onnx.NodeProto, str]],
          fusions: Mapping[str, DepthwiseFusion] | None = None) -> onnx.ModelProto:
    """`m` with the chosen convs on the kernel; those of them in `fusions` (by output name) with
    their depthwise conv inside."""
    from sparsec.backends.ort.nchwc_dw_fusion import fused_initializers, fused_node

    fusions = {k: f for k, f in (fusions or {}).items() if k in chosen}
    dropped = {f.dw.output[0] for f in fusions.values()}
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes, extra = [], []
    for n in m.graph.node:
        key = n.output[0] if n.output else None
        if key in dropped:
            continue
        if key in chosen:
            n = chosen[key][1]
            if key in fusions:
                names = (f"{n.name or key}_dw_weight", f"{n.name or key}_dw_bias")
                n = fused_node(n, fusions[key], names)
                extra += fused_initializers(fusions[key], names)
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(extra)
    for packed, node, _ in chosen.values():
        out.graph.initializer.extend([numpy_helper.from_array(packed.idx.reshape(-1), node.input[1]),
                                      numpy_helper.from_array(packed.vals.reshape(-1), node.input[2]),
                                      numpy_helper.from_array(packed.offs.reshape(-1), node.input[5])])
    used = {i for n in out.graph.node for i in n.input}
    keep = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    if chosen and not any(o.domain == "com.sparsec.kernels" for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.sparsec.kernels", 1))
    return out


def profile_node_ms(model: bytes, threads: int, feeds: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Each node's median time over `runs` runs of `model` (laid out already), from ORT's profiler."""
    import onnxruntime as ort

    from sparsec.backends.ort.sparse_ops import session_options
    from sparsec.bench import profile_node_events

    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # laid out already
    events, _ = profile_node_events(model, opts, feeds, runs)
    times: dict[str, list[float]] = {}
    for e in events:
        times.setdefault(e["node"], []).append(e["ms"])
    # Medians per node: the first runs of a session are slower, and the profiler counts them.
    return {k: float(np.median(v)) for k, v in times.items()}


def _faster_end_to_end(base: onnx.ModelProto, base_bytes: bytes, chosen: dict[str, tuple[Any, onnx.NodeProto, str]], result: NchwcLowering,
                       threads: int, feeds: dict[str, np.ndarray],
                       fusions: Mapping[str, DepthwiseFusion] | None = None) -> dict[str, tuple[Any, onnx.NodeProto, str]]:
    """`chosen`, or the convs of it that gained at least RETRY_GAIN, or none: whichever first
    runs the whole model faster than with no sparse conv."""
    from sparsec.backends.ort.sparse_ops import make_session
    from sparsec.bench import compare_interleaved
    from sparsec.latency import budget_from_env

    budget = budget_from_env() / 2  # the compile's latency budget, half of it per try at most
    gains = {c.node: c.dense_ms / c.sparse_ms for c in result.convs if c.dense_ms and c.sparse_ms}
    # Each side with ORT's spinning off and on, the faster counting, by the compile's own paired
    # protocol (pauses until the last contender's spinning pools are idle), as its final check
    # measures: with spinning off on both sides, small models (where spinning matters most to
    # dense) looked faster here than they measured there.
    dense = {spin: make_session(base_bytes, threads, allow_spinning=spin) for spin in (False, True)}
    tries = [chosen, {k: v for k, v in chosen.items() if gains.get(v[1].name, 0.0) >= RETRY_GAIN}]
    for attempt in tries:
        if not attempt:
            continue
        data = _with(base, attempt, fusions).SerializeToString()
        sparse = {spin: make_session(data, threads, allow_spinning=spin) for spin in (False, True)}
        runs = {f"{side} spin={int(spin)}": (lambda s=sess: s.run(None, feeds))
                for side, sessions in (("dense", dense), ("sparse", sparse)) for spin, sess in sessions.items()}
        t = compare_interleaved("dense spin=1", runs, budget_s=budget, label="lower-conv-nchwc: whole model").timings
        dense_ms = min(t[f"dense spin={i}"].median_ms for i in (0, 1))
        sparse_ms = min(t[f"sparse spin={i}"].median_ms for i in (0, 1))
        ratio = dense_ms / sparse_ms
        result.end_to_end.append({"convs": len(attempt), "dense_ms": round(dense_ms, 4),
                                  "sparse_ms": round(sparse_ms, 4), "speedup": round(ratio, 4)})
        if ratio >= MODEL_GAIN:
            for c in result.convs:
                if c.sparse is False and c.node not in {v[1].name for v in attempt.values()} and not c.reason:
                    c.reason = f"the model ran faster without it (gain {gains.get(c.node, 0):.2f}x < {RETRY_GAIN})"
            return attempt
    for c in result.convs:
        c.reason = c.reason or "the whole model was not faster with the sparse convs"
    return {}


def _fastest_rounds(models: list[bytes], threads: int, feeds: dict[str, np.ndarray], runs: int,
                    rounds: int = PROFILE_ROUNDS) -> list[dict[str, float]]:
    """Per model, each node's time in its fastest of `rounds` profiles, the models profiled in
    turn within each round (a slow burst then hits both sides of a comparison alike)."""
    best: list[dict[str, float]] = [{} for _ in models]
    for _ in range(rounds):
        for times, model in zip(best, models, strict=True):
            for node, ms in profile_node_ms(model, threads, feeds, runs).items():
                times[node] = min(ms, times.get(node, ms))
    return best


def _fusions(base: onnx.ModelProto, chosen: dict[str, tuple[Any, onnx.NodeProto, str]],
              small: dict[str, tuple[Any, onnx.NodeProto, str]], fusions: Mapping[str, DepthwiseFusion],
              by_out: dict[str, ConvChoice], dense_ms: dict[str, float], threads: int,
              feeds: dict[str, np.ndarray], runs: int) -> tuple[set[str], set[str]]:
    """(the 1x1 convs to run with their depthwise conv inside, the `small` convs that go
    sparse that way), measured: a chosen conv keeps its fusion where the fused node beats its
    unfused node and the depthwise node together; a `small` conv (faster on the kernel, but by
    less than MIN_GAIN_MS, the cost of a custom op call) goes sparse where the fused node beats
    the dense conv and the depthwise conv together by MIN_GAIN_MS: the fusion also saves an op
    call."""
    trial = {k: v for k, v in {**chosen, **small}.items() if k in chosen or k in fusions}
    tried = {k: f for k, f in fusions.items() if k in trial}
    if not tried:
        return set(), set()
    fused_ms = _fastest_rounds([_with(base, trial, tried).SerializeToString()], threads, feeds, runs)[0]
    keep, promoted = set(), set()
    for out, f in tried.items():
        c = by_out[out]
        c.depthwise_ms, c.fused_ms = dense_ms.get(f.dw.name), fused_ms.get(trial[out][1].name)
        if c.depthwise_ms is None or c.fused_ms is None or c.sparse_ms is None or c.dense_ms is None:
            continue
        if out in chosen and c.fused_ms < c.sparse_ms + c.depthwise_ms:
            keep.add(out)
        elif out in small and c.fused_ms + MIN_GAIN_MS <= c.dense_ms + c.depthwise_ms:
            keep.add(out)
            promoted.add(out)
            c.reason = ""
    return keep, promoted


def lower_nchwc_convs(model: bytes, feeds: dict[str, np.ndarray], threads: int = 2, *, measure: bool = True,
                      runs: int = 20, fuse_depthwise: bool = True, keep_dense: Collection[str] = ()) -> NchwcLowering:
    """`model` (plain ONNX with N:M conv weights stored dense) laid out by ONNX Runtime, with
    its sparse convs on the NCHWc kernel where they measured faster (`measure`), else all, and
    (`fuse_depthwise`) the depthwise convs they alone read run inside them where that measured
    faster (else wherever possible). Convs whose weight's `mask_key` is in `keep_dense` stay
    dense (the compile's never-slower fallback)."""
    from sparsec.backends.ort.nchwc_dw_fusion import find_depthwise

    base = ort_nchwc_model(model, threads)
    found, skipped = _candidates(base)
    fallback = [k for k, (_, _, key) in found.items() if key in keep_dense]
    for k in fallback:
        del found[k]
    if fallback:
        skipped["kept dense: the compiled model was not faster with it sparse (never-slower fallback)"] = len(fallback)
    result = NchwcLowering(b"", skipped=skipped)
    for out_name, (packed, node, key) in found.items():
        a = node_attrs(node)
        result.convs.append(ConvChoice(node.name or out_name, [packed.cout, packed.cin, packed.kh, packed.kw],
                                       [a["stride_h"], a["stride_w"]], round(packed.kept_fraction * BLOCK, 2), key))
    chosen = dict(found)
    by_out = dict(zip(found, result.convs, strict=True))
    # Which candidates could run a depthwise conv inside: found once, whichever end up sparse.
    fusions = find_depthwise(base, {k: v[1] for k, v in found.items()}) if fuse_depthwise else {}
    fuse: set[str] = set(fusions)  # unmeasured: every conv that can
    small: dict[str, tuple[Any, onnx.NodeProto, str]] = {}  # faster, by less than an op call's cost
    if measure and found:
        base_bytes = base.SerializeToString()  # serialized once: profiled, then the whole-model baseline
        dense_ms, sparse_ms = _fastest_rounds([base_bytes, _with(base, found).SerializeToString()], threads, feeds, runs)
        for (out_name, (_, node, _)), c in zip(found.items(), result.convs, strict=True):
            c.dense_ms, c.sparse_ms = dense_ms.get(node.name), sparse_ms.get(node.name)
            if c.dense_ms is None or c.sparse_ms is None:
                c.reason = "no profiler time (kept dense)"
                del chosen[out_name]
            elif c.dense_ms < MIN_GAIN * c.sparse_ms or c.dense_ms - c.sparse_ms < MIN_GAIN_MS:
                c.reason = (f"kernel {c.sparse_ms:.3f} ms vs dense {c.dense_ms:.3f} ms: not faster by "
                            f"{MIN_GAIN:g}x and {MIN_GAIN_MS * 1e3:.0f} us")
                if c.dense_ms >= MIN_GAIN * c.sparse_ms:
                    small[out_name] = chosen[out_name]
                del chosen[out_name]
        fuse, promoted = _fusions(base, chosen, small, fusions, by_out, dense_ms, threads, feeds, runs)
        chosen.update({k: small[k] for k in promoted})
        chosen = _faster_end_to_end(base, base_bytes, chosen, result, threads, feeds,
                                    {k: fusions[k] for k in fuse})
    fused = {k: fusions[k] for k in fuse if k in chosen}
    for out, f in fused.items():
        by_out[out].depthwise = f.dw.name or f.dw.output[0]
    for c, out_name in zip(result.convs, found, strict=True):
        c.sparse = out_name in chosen
    result.model = _with(base, chosen, fused).SerializeToString()
    return result


__all__ = ["ACTIVATIONS", "BLOCK", "NCHWC_DOMAIN", "ConvChoice", "NchwcLowering", "lower_nchwc_convs", "mask_key",
           "nchwc_available", "node_attrs", "ort_nchwc_model",
           "profile_node_ms"]
