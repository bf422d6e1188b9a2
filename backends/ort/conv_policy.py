"""When a sparse Conv runs faster on the SparseConv kernel than on ONNX Runtime's dense Conv.

`conv_candidates(spec)` lists the ways to run one Conv (dense, and the sparse kernel with its
packing parameters), each with a predicted speed-up: the hook a per-machine tuner can time
instead of trusting the prediction. The rule is fitted to per-layer timings of ResNet-50 and
MobileNetV2 shapes on this project's machine (bench/results/conv_bench_layers_cpu.json: Intel
Xeon with AVX-512, one thread, CPU time, under load): per kept weight the kernel runs at about
0.42 of MLAS's per-weight rate at half density and 0.27 at 20% (shorter rows, pair padding),
0.9 of that on 14x14 maps, 0.65 on 7x7 maps (one 64-position block, a quarter of it empty) and
0.75 on strided k x k convs. ORT runs dense convs in its NCHWc layout: a kernel op between dense
convs costs a reorder of its input and output (measured on MobileNetV2: lowering 11 1x1 convs that
each ran 1.2-1.9x faster alone made the model 0.84x as fast), so `choose` charges that too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsec.kernels.packing_conv import default_kc

MIN_SPEEDUP = 1.15  # lower only with this margin: the rule is an average over shapes
DENSE_FLOP_PER_MS = 9.0e7  # MLAS, one thread, this machine (80-110 GFLOP/s measured)
REORDER_BYTES_PER_MS = 1.0e7  # NCHWc <-> NCHW reorders, read + write, as measured end to end


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
    eff = 0.27 + (d - 0.2) * (0.42 - 0.27) / 0.3
    positions = spec.ho * spec.wo
    eff *= 1.0 if positions >= 512 else 0.9 if positions >= 128 else 0.65
    if spec.stride > 1 and spec.kh * spec.kw > 1:
        eff *= 0.75
    return eff


def predict_speedup(spec: ConvSpec) -> float:
    """Kernel alone over dense ORT Conv alone."""
    return kernel_efficiency(spec) / max(spec.density, 1e-6)


def predict_gain_ms(spec: ConvSpec) -> float:
    """Time saved per run by the kernel, after the NCHWc reorders it costs (one thread)."""
    dense_ms = 2.0 * spec.cin * spec.cout * spec.kh * spec.kw * spec.ho * spec.wo / DENSE_FLOP_PER_MS
    reorder_ms = 2 * 4 * (spec.cin * spec.h * spec.w + spec.cout * spec.ho * spec.wo) / REORDER_BYTES_PER_MS
    return dense_ms * (1.0 - 1.0 / max(predict_speedup(spec), 1e-6)) - reorder_ms


def conv_candidates(spec: ConvSpec) -> list[ConvCandidate]:
    """Ways to run this Conv, dense first (a tuner times them; the rule picks by prediction)."""
    return [
        ConvCandidate("dense", {}, 1.0),
        ConvCandidate("sparse-conv", {"kc": default_kc(spec.kh, spec.kw, spec.stride)}, predict_speedup(spec)),
    ]


def choose(spec: ConvSpec, min_speedup: float = MIN_SPEEDUP) -> ConvCandidate:
    """The rule's pick: the sparse kernel if predicted at least `min_speedup` faster alone and
    still faster once its layout reorders are paid."""
    dense, sparse = conv_candidates(spec)
    return sparse if sparse.predicted_speedup >= min_speedup and predict_gain_ms(spec) > 0 else dense
