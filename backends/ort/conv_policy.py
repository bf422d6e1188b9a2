"""When a sparse Conv runs faster on the SparseConv kernel than on ONNX Runtime's dense Conv.

`conv_candidates(spec)` lists the ways to run one Conv (dense, and the sparse kernel with its
packing parameters), each with a predicted speed-up: the hook a per-machine tuner can time
instead of trusting the prediction. `predict_speedup` is a rule fitted to per-layer timings of
ResNet-50 and MobileNetV2 shapes on this project's machine (bench/conv_bench.py, one thread,
CPU time, under load: Intel Xeon with AVX-512): the kernel does one FMA (16 positions) per
kept weight at about 0.40 of MLAS's per-FMA rate for half-dense weights and 0.28 at 20%
density (shorter rows, more pair padding), less when the 64-position blocks are mostly empty
(7x7 maps) and about half as well on strided k x k convs (stride phases, compressed stores).
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsec.kernels.packing_conv import default_kc

MIN_SPEEDUP = 1.15  # lower only with this margin: the rule is an average over shapes
BLOCK = 64  # output positions per kernel block (AVX-512)


@dataclass(frozen=True)
class ConvSpec:
    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    h: int  # input height and width
    w: int
    ho: int
    wo: int
    density: float  # kept weights / all weights


@dataclass(frozen=True)
class ConvCandidate:
    name: str  # "dense" | "sparse-conv"
    params: dict
    predicted_speedup: float  # over dense ONNX Runtime Conv


def kernel_efficiency(spec: ConvSpec) -> float:
    """Kernel throughput per kept weight relative to MLAS's per dense weight (see module doc)."""
    d = min(max(spec.density, 0.2), 0.5)
    eff = 0.28 + (d - 0.2) * (0.40 - 0.28) / 0.3
    grid_w = spec.wo if spec.kh * spec.kw == 1 and spec.stride == 1 else -(-(spec.w + spec.kw - 1) // spec.stride)
    positions = spec.ho * grid_w
    util = positions / (BLOCK * -(-positions // BLOCK))
    eff *= util * util  # empty lanes cost loads and FMAs, and few blocks starve the threads
    if spec.stride > 1 and spec.kh * spec.kw > 1:
        eff *= 0.55
    return eff


def predict_speedup(spec: ConvSpec) -> float:
    return kernel_efficiency(spec) / max(spec.density, 1e-6)


def conv_candidates(spec: ConvSpec) -> list[ConvCandidate]:
    """Ways to run this Conv, dense first (a tuner times them; the rule picks by prediction)."""
    return [
        ConvCandidate("dense", {}, 1.0),
        ConvCandidate("sparse-conv", {"kc": default_kc(spec.kh, spec.kw, spec.stride)}, predict_speedup(spec)),
    ]


def choose(spec: ConvSpec, min_speedup: float = MIN_SPEEDUP) -> ConvCandidate:
    """The rule's pick: the sparse kernel if predicted at least `min_speedup` faster."""
    dense, sparse = conv_candidates(spec)
    return sparse if sparse.predicted_speedup >= min_speedup else dense
