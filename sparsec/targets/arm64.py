"""The aarch64 Linux target: NEON kernels, cross-compiled on this machine.

Two backends (`--backend`): `ort` (default; ONNX Runtime with sparsec's kernel op library
cross-compiled for aarch64, `libsparsec_kernels.so` in the artifact) and `tvm` (the model
compiled by TVM for `aarch64-linux-gnu` with the N:M kernels linked in as packed functions,
`model.so`). Code for this target never runs natively here: fidelity is measured on the x86
build of the same kernels (ort) or on the aarch64 library under qemu user emulation (tvm), and
latency is not measured (emulated time says nothing about a real board).

Roofline constants are nominal (a 2-core Neoverse-N1-class board: 2 x 2.5 GHz x 2 FMA
pipes x 4 fp32 lanes = 80 GFLOP/s peak, about half sustained; ~20 GB/s DRAM); they feed the
predicted-latency column only.
"""

from __future__ import annotations

from typing import ClassVar

from sparsec.targets import Target, register_target

TRIPLE = "aarch64-linux-gnu"


@register_target
class Arm64Target(Target):
    name = "arm64"
    backend = "ort-arm64"
    backends: ClassVar[dict[str, str]] = {"ort": "ort-arm64", "tvm": "tvm-arm64"}
    peak_gflops = 40.0
    dram_gbps = 20.0
    channel_multiple = 4  # one 128-bit NEON vector of fp32
    patterns = frozenset({"nm"})
    ops = frozenset({"NMSparse"})
    measured_here = False
    not_measured_reason = "not measured: aarch64 code runs only under qemu emulation on this machine"
    triple: ClassVar[str] = TRIPLE
