"""Attention kernel bar (issue 11): sparsec's fused block-sparse attention vs ONNX Runtime.

Prints one JSON document. One process, 2 threads everywhere, every variant is a one-node (or
decomposed) ONNX model run by ONNX Runtime's CPU provider; warm-up first, then the median of
>= 5 timed runs (each run is far over 100 ms). Case: batch 1, 8 heads x 64, S = 4096, causal,
block 64. Variants:
- sparsec kernel op (com.sparsec.kernels.SparseAttention) at ~10% of the causal blocks
  (local window + sink blocks) and at 100% (dense causal layout);
- ORT dense: com.microsoft.MultiHeadAttention (causal via unidirectional=1, else a mask),
  com.microsoft.GroupQueryAttention (causal), ONNX Attention-23 (is_causal=1) and the
  decomposed MatMul / Add(causal mask) / Softmax / MatMul graph - whichever run here.
- ORT's own block-sparse op, com.microsoft.SparseAttention, at the same layout (CSR block
  rows/columns, prompt: total length = S): its CPU kernel (fp32 and fp16) needs past/present
  K/V buffers that share memory, so it runs with an IOBinding that binds one buffer to both.
  The ratio sparsec sparse kernel vs it (bar >= 5x) comes from an interleaved paired run
  (`sparsec.bench.compare_interleaved`), not from the sequential medians above.
Outputs are checked: the dense kernel against ORT's dense result, the sparse kernel and
com.microsoft.SparseAttention against the reference lowering of com.sparsec.SparseAttention.
`uptime` load averages are recorded next to the numbers: on a shared machine they matter.

    .venv/bin/python bench/attention_bench.py [--seq 4096] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sparsec.bench import compare_interleaved, machine_info, paired_noise

HEADS, DIM, BLOCK, THREADS = 8, 64, 64, 2



def _model(nodes, inputs, outputs, inits=(), opset=21, extra_opsets=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 10
    return model.SerializeToString()


def _t(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _session(data: bytes, custom: bool) -> ort.InferenceSession:
    if custom:
        from sparsec.backends.ort.sparse_ops import session_options

        opts = session_options(THREADS)
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _time(session: ort.InferenceSession, feeds: dict, runs: int) -> tuple[float, list[np.ndarray]]:
    out = session.run(None, feeds)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def kernel_model(seq: int, local: int, sinks: int, topk: int = 0) -> bytes:
    rows = [[local], [sinks]] + ([[topk]] if topk else [])
    layout = numpy_helper.from_array(np.array(rows, np.int32), "layout")
    node = helper.make_node("SparseAttention", ["q", "k", "v", "layout"], ["y"], domain="com.sparsec.kernels",
                            scale=DIM ** -0.5, block=BLOCK, causal=1, has_bias=0)
    shape = (1, HEADS, seq, DIM)
    return _model([node], [_t("q", shape), _t("k", shape), _t("v", shape)], [_t("y", shape)], [layout],
                  extra_opsets=("com.sparsec.kernels",))


def reference_model(seq: int, local: int, sinks: int, topk: int = 0) -> bytes:
    """The com.sparsec.SparseAttention reference lowering (standard ONNX) of the same layout."""
    import onnx_ir as ir

    from sparsec.dialect import DOMAIN
    from sparsec.dialect.reference import lower_to_reference
    from sparsec.ir.io import model_bytes

    f32 = ir.TensorType(ir.DataType.FLOAT)
    vals = [ir.Value(name=n, shape=ir.Shape([1, HEADS, seq, DIM]), type=f32) for n in "qkv"]
    node = ir.Node(DOMAIN, "SparseAttention", vals, attributes=[
        ir.AttrFloat32("scale", DIM ** -0.5), ir.AttrInt64("block", BLOCK), ir.AttrInt64("causal", 1),
        ir.AttrInt64s("local_blocks", [local]), ir.AttrInt64s("sink_blocks", [sinks]),
        *([ir.AttrInt64s("topk_blocks", [topk])] if topk else [])], num_outputs=1)
    node.outputs[0].name, node.outputs[0].type = "y", f32
    model = ir.Model(ir.Graph(vals, [node.outputs[0]], nodes=[node], opset_imports={"": 18, DOMAIN: 1}), ir_version=9)
    lower_to_reference(model)
    return model_bytes(model)


def layout_csr(seq: int, local: int, sinks: int) -> tuple[np.ndarray, np.ndarray]:
    """The causal local+sinks block layout as com.microsoft.SparseAttention's CSR block mask:
    row pointers [1, blocks + 1] and column indices [1, nnz] (one layout shared by all heads)."""
    from sparsec.dialect.attention import BlockLayout

    nb = -(-seq // BLOCK)
    allowed = BlockLayout(BLOCK, True, (local,), (sinks,)).block_allowed(0, nb, nb)
    rows = np.concatenate([[0], np.cumsum(allowed.sum(axis=1))]).astype(np.int32)
    cols = np.nonzero(allowed)[1].astype(np.int32)  # row-major: column indices row after row
    return rows[None, :], cols[None, :]


def ms_sparse_attention_model(seq: int, local: int, sinks: int) -> bytes:
    """com.microsoft.SparseAttention (prompt: no past, total length = seq) at the same layout.
    Inputs q/k/v [1, S, H*D]; past_key/past_value [1, H, S, D] are the K/V cache buffers."""
    rows, cols = layout_csr(seq, local, sinks)
    inits = [numpy_helper.from_array(rows, "block_row_indices"), numpy_helper.from_array(cols, "block_col_indices"),
             numpy_helper.from_array(np.array([seq], np.int32), "total_sequence_length"),
             numpy_helper.from_array(np.array([seq], np.int32), "key_total_sequence_lengths")]
    node = helper.make_node(
        "SparseAttention", ["q", "k", "v", "past_key", "past_value", "block_row_indices", "block_col_indices",
                            "total_sequence_length", "key_total_sequence_lengths"],
        ["y", "present_key", "present_value"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS,
        sparse_block_size=BLOCK, scale=DIM ** -0.5)
    b3, cache = (1, seq, HEADS * DIM), (1, HEADS, seq, DIM)
    return _model([node], [_t("q", b3), _t("k", b3), _t("v", b3), _t("past_key", cache), _t("past_value", cache)],
                  [_t("y", b3), _t("present_key", cache), _t("present_value", cache)], inits,
                  extra_opsets=("com.microsoft",))


def ms_sparse_attention_runner(seq: int, local: int, sinks: int, feeds3: dict) -> Callable[[], np.ndarray]:
    """A call running com.microsoft.SparseAttention on `feeds3`, returning y [1, S, H*D].

    Its CPU kernel enforces that past and present K/V share one buffer (ORT_ENFORCE), which a
    plain run() cannot arrange: an IOBinding binds one OrtValue as both. A prompt run writes
    the new K/V at position 0, so repeating the call computes the same thing each time."""
    session = _session(ms_sparse_attention_model(seq, local, sinks), False)
    binding = session.io_binding()
    for name in ("q", "k", "v"):
        binding.bind_cpu_input(name, feeds3[name])
    for past, present in (("past_key", "present_key"), ("past_value", "present_value")):
        buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, HEADS, seq, DIM), np.float32))
        binding.bind_ortvalue_input(past, buf)
        binding.bind_ortvalue_output(present, buf)
    binding.bind_output("y")

    def run() -> np.ndarray:
        session.run_with_iobinding(binding)
        return binding.get_outputs()[2].numpy()  # outputs in binding order: present K, present V, y

    return run


def bshd(x: np.ndarray) -> np.ndarray:
    """[B, H, S, D] -> [B, S, H*D] (the contrib ops' layout)."""
    b, h, s, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(b, s, h * d))


def dense_variants(seq: int) -> dict[str, tuple[bytes, str]]:
    """name -> (model, layout of its inputs: 'bhsd' or 'bsd')."""
    hd = HEADS * DIM
    b3, b4 = (1, seq, hd), (1, HEADS, seq, DIM)
    out = {}
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=HEADS,
                           unidirectional=1)
    out["ort_multiheadattention_causal"] = (_model([mha], [_t("q", b3), _t("k", b3), _t("v", b3)], [_t("y", b3)],
                                                   extra_opsets=("com.microsoft",)), "bsd")
    seqlens = numpy_helper.from_array(np.array([seq - 1], np.int32), "seqlens_k")
    total = numpy_helper.from_array(np.array(seq, np.int32), "total_seq")
    gqa = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total_seq"],
                           ["y", "pk", "pv"], domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS,
                           scale=DIM ** -0.5)
    out["ort_groupqueryattention"] = (_model([gqa], [_t("q", b3), _t("k", b3), _t("v", b3)], [_t("y", b3)],
                                             [seqlens, total], extra_opsets=("com.microsoft",)), "bsd")
    att = helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1, scale=DIM ** -0.5)
    out["onnx_attention23_causal"] = (_model([att], [_t("q", b4), _t("k", b4), _t("v", b4)], [_t("y", b4)],
                                             opset=23), "bhsd")
    mask = np.triu(np.full((seq, seq), -np.inf, np.float32), 1)
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(DIM ** -0.5, np.float32), "scale"), numpy_helper.from_array(mask, "mask")]
    out["ort_decomposed_causal"] = (_model(nodes, [_t("q", b4), _t("k", b4), _t("v", b4)], [_t("y", b4)], inits),
                                    "bhsd")
    return out


def _vs_ms_sparse_attention(result: dict, name: str, seq: int, args: argparse.Namespace, feeds3: dict,
                            feeds4: dict, ref: np.ndarray) -> dict:
    """Add com.microsoft.SparseAttention as a variant (checked against `ref`, the reference
    lowering) and time it interleaved with sparsec's kernel at the same layout; the ratio
    entry (or why there is none: an op this ORT build cannot run here says so)."""
    try:
        run_ms = ms_sparse_attention_runner(seq, args.local, args.sinks, feeds3)
        y = run_ms()
    except Exception as exc:  # noqa: BLE001  (reported in the JSON: the reason is the result)
        result["variants"][name] = {"error": str(exc).splitlines()[0][:300]}
        return {"measured": False, "reason": result["variants"][name]["error"]}
    y4 = y.reshape(1, seq, HEADS, DIM).transpose(0, 2, 1, 3)
    ms, _ = _time_callable(run_ms, args.runs)
    result["variants"][name] = {"ms": round(ms, 2), "max_abs_vs_reference_lowering": float(np.abs(y4 - ref).max()),
                                "layout": "CSR of the same causal local+sinks block mask, one layout for all heads",
                                "note": "ORT's CPU kernel (contrib_ops/cpu/sparse/sparse_attention_base.h) runs the "
                                        "full Q K^T GEMM per head and applies the block mask to the scores before "
                                        "softmax, then a dense P V: no block is skipped"}
    kernel = _session(kernel_model(seq, args.local, args.sinks), True)
    fns = {name: run_ms, "sparsec_kernel_sparse": lambda: kernel.run(None, feeds4)}
    cmp = compare_interleaved(name, fns, budget_s=args.budget, min_rounds=max(5, args.runs), max_rounds=50,
                              label="sparsec vs com.microsoft.SparseAttention")
    t = cmp.timings
    return {"measured": True, "ratio": round(cmp.speedups["sparsec_kernel_sparse"], 2),
            "noise": round(paired_noise(cmp, name, "sparsec_kernel_sparse"), 4), "rounds": cmp.rounds,
            "com_microsoft_ms": round(t[name].median_ms, 2), "sparsec_ms": round(t["sparsec_kernel_sparse"].median_ms, 2),
            "protocol": "sparsec.bench.compare_interleaved (blocks >= 20 ms, first quarter discarded, medians)"}


def _time_callable(fn: Callable[[], np.ndarray], runs: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--local", type=int, default=2, help="local window in blocks")
    parser.add_argument("--sinks", type=int, default=1, help="sink blocks")
    parser.add_argument("--topk", type=int, default=4,
                        help="run-time top-k variant: own block + 1 sink + this many picked blocks (0: skip)")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds for the interleaved sparsec vs com.microsoft.SparseAttention run (>= 5 rounds)")
    args = parser.parse_args()
    from sparsec.dialect.attention import BlockLayout

    seq = args.seq
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, HEADS, seq, DIM), dtype=np.float32) for _ in range(3))
    feeds4 = {"q": q, "k": k, "v": v}
    feeds3 = {n: bshd(x) for n, x in feeds4.items()}
    density = BlockLayout(BLOCK, True, (args.local,), (args.sinks,)).density(1, seq, seq)
    causal_flops = 4.0 * HEADS * DIM * seq * (seq + 1) / 2  # QK^T + PV over the causal half
    result: dict = {"case": {"seq": seq, "heads": HEADS, "dim": DIM, "block": BLOCK, "causal": True,
                             "threads": THREADS, "local_blocks": args.local, "sink_blocks": args.sinks,
                             "density_of_causal_blocks": round(density, 4)},
                    "cpu": machine_info(), "load_before": os.getloadavg(), "variants": {}}
    # The sparse layout's reference: com.sparsec.SparseAttention's standard-ONNX lowering.
    ref = _session(reference_model(seq, args.local, args.sinks), False).run(None, feeds4)[0]
    dense_ref = None
    for name, (data, layout) in dense_variants(seq).items():
        try:
            ms, out = _time(_session(data, False), feeds3 if layout == "bsd" else feeds4, args.runs)
        except Exception as exc:  # noqa: BLE001  (an op this ORT build lacks is reported, not fatal)
            result["variants"][name] = {"error": str(exc).splitlines()[0][:200]}
            continue
        y = out[0]
        y4 = y.reshape(1, seq, HEADS, DIM).transpose(0, 2, 1, 3) if layout == "bsd" else y
        if dense_ref is None:
            dense_ref = y4
        err = float(np.abs(y4 - dense_ref).max())
        result["variants"][name] = {"ms": round(ms, 2), "gflops_causal": round(causal_flops / ms / 1e6, 1),
                                    "max_abs_vs_first_dense": err}
    for name, local, sinks in (("sparsec_kernel_sparse", args.local, args.sinks), ("sparsec_kernel_dense", -1, 0)):
        ms, out = _time(_session(kernel_model(seq, local, sinks), True), feeds4, args.runs)
        entry = {"ms": round(ms, 2)}
        if local == -1:
            entry["max_abs_vs_ort_dense"] = float(np.abs(out[0] - dense_ref).max())
            entry["gflops_causal"] = round(causal_flops / ms / 1e6, 1)
        else:
            entry["max_abs_vs_reference_lowering"] = float(np.abs(out[0] - ref).max())
            entry["gflops_effective"] = round(causal_flops * density / ms / 1e6, 1)
        result["variants"][name] = entry
    if args.topk:
        # Run-time block top-k (pooled Q.K picks per query block) on random data: the speed of
        # the dynamic path at a similar density, checked against its reference lowering.
        topk_density = BlockLayout(BLOCK, True, (1,), (1,), None, (args.topk,)).density(1, seq, seq)
        ms, out = _time(_session(kernel_model(seq, 1, 1, args.topk), True), feeds4, args.runs)
        topk_ref = _session(reference_model(seq, 1, 1, args.topk), False).run(None, feeds4)[0]
        result["variants"]["sparsec_kernel_topk"] = {
            "ms": round(ms, 2), "layout": f"local 1 + sinks 1 + top-{args.topk} blocks at run time",
            "density_of_causal_blocks": round(topk_density, 4),
            "max_abs_vs_reference_lowering": float(np.abs(out[0] - topk_ref).max()),
            "gflops_effective": round(causal_flops * topk_density / ms / 1e6, 1)}
    ms_name = "ort_com_microsoft_sparseattention"
    ms_ratio = _vs_ms_sparse_attention(result, ms_name, seq, args, feeds3, feeds4, ref)
    dense_ms = {n: e["ms"] for n, e in result["variants"].items()
                if "ms" in e and not n.startswith("sparsec") and n != ms_name}
    best = min(dense_ms, key=dense_ms.get)
    sp, dn = result["variants"]["sparsec_kernel_sparse"]["ms"], result["variants"]["sparsec_kernel_dense"]["ms"]
    result["bars"] = {
        "fastest_ort_dense": best,
        "sparse_speedup_vs_fastest_dense": round(dense_ms[best] / sp, 2), "needs": 6.0,
        "dense_kernel_vs_fastest_dense": round(dn / dense_ms[best], 2), "dense_needs_at_most": 1.3,
        "vs_com_microsoft_SparseAttention": ms_ratio, "vs_com_microsoft_SparseAttention_needs": 5.0,
    }
    if "sparsec_kernel_topk" in result["variants"]:
        result["bars"]["topk_speedup_vs_fastest_dense"] = round(
            dense_ms[best] / result["variants"]["sparsec_kernel_topk"]["ms"], 2)
    result["load_after"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
