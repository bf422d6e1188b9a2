"""The x86-64 CPU target: ONNX Runtime with sparsec's N:M and block-sparse kernels."""

from __future__ import annotations

from sparsec.targets import Target, register_target


@register_target
class CpuTarget(Target):
    name = "cpu"
    backend = "ort"
    backends = {"ort": "ort", "tvm": "tvm"}  # --backend=tvm: Apache TVM with the kernels linked in
    # 2 cores with AVX-512 FMA at ~2.5 GHz; MLAS sustains about half of the 320 GFLOP/s peak.
    peak_gflops = 150.0
    dram_gbps = 12.0
    # Channel counts in multiples of 16 keep MLAS's kernels at full speed (crops lose 13-19% otherwise).
    channel_multiple = 16
    patterns = frozenset({"nm"})  # lower-nm-kernels; block-sparse layers still run dense
    ops = frozenset({"NMSparse"})
    tuned_here = True  # layers are pruned only where a kernel was measured faster (sparsec.tune)
