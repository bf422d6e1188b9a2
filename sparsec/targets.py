"""Target descriptions: what the cost model assumes about the machine.

Numbers are nominal roofline parameters for the predicted-latency column; measured latency
always comes from a real benchmark, never from these.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsec.errors import OptionError


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    peak_gflops: float  # sustained fp32 GFLOP/s of the dense library on this target
    dram_gbps: float  # sustained memory bandwidth, GB/s
    channel_multiple: int  # channel counts that keep dense kernels efficient


# cpu: 2 cores with AVX-512 FMA at ~2.5 GHz; MLAS sustains about half of the 320 GFLOP/s peak.
TARGETS = {
    "cpu": Target("cpu", "ort", peak_gflops=150.0, dram_gbps=12.0, channel_multiple=16),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise OptionError(f"unknown target '{name}' (known: {', '.join(TARGETS)})") from None
