"""The measurement protocol (DESIGN.md §5): side by side, warm-up, median of many runs."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from sparsec.idle_threads import wait_for_idle_threads

SLOW_RUN_S = 0.100  # runs slower than this need only MIN_RUNS_SLOW repetitions


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def time_side_by_side(
    fns: dict[str, Callable[[], Any]],
    *,
    min_runs: int = 20,
    min_runs_slow: int = 5,
    warmup: int = 3,
    budget_s: float = 20.0,
    label: str = "benchmark",
) -> dict[str, Timing]:
    """Time each callable side by side, interleaved in blocks so that drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    probe = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        probe[name] = time.perf_counter() - t0
    slowest = max(probe.values())
    runs = min_runs_slow if slowest > SLOW_RUN_S else min_runs
    # Spend more of the budget on more runs when they are cheap, never fewer than required.
    round_s = sum(probe.values()) or 1e-6
    runs = max(runs, min(200, int(budget_s / round_s)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    # Blocked round-robin: each contender runs a block of calls and the first call of each
    # block is discarded, so the previous contender's thread pool spinning down (ONNX
    # Runtime spins its workers after a run) does not land on the next one's timings.
    block = 4
    rounds = max(1, -(-runs // (block - 1)))
    for i in tqdm(range(rounds), desc=label, unit="round", leave=False, disable=None):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            for j in range(block):
                t0 = time.perf_counter()
                fns[name]()
                if j:
                    samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _summary(s) for name, s in samples.items()}


def _summary(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    k = len(ordered)
    return Timing(
        median_ms=statistics.median(ordered),
        p10_ms=ordered[max(0, int(0.1 * (k - 1)))],
        p90_ms=ordered[min(k - 1, int(round(0.9 * (k - 1))))],
        runs=k,
    )


# ---- Paired comparison with a noise estimate (the compile's and the tuner's protocol) ----

PAIRED_PROTOCOL = (
    "interleaved blocks (order alternating each round, before each block a pause and a wait until "
    "the previous contender's spinning pools are idle; each block at least 20 ms and 4 calls long, its first "
    "quarter discarded as the pools and caches warm up again), warm-up {warmup} calls each, median of "
    "the rest; noise = 95% half-width of the median per-round log ratio"
)
# Calls after a pause run slow for a while (idle cores wake, caches refill), and more so for
# the sparse kernels' pool: with blocks of 4 calls (1 discarded) the demo's digits_mlp compile
# measured itself 0.95x dense three times and fell back to dense, while blocks of >= 20 ms
# give 1.70x, as a plain back-to-back loop does (bench/results/latency_protocol_blocks.json).
BLOCK_MS = 20.0
# After the pause, wait (at most this long) for the last contender's spinning threads to stop:
# ORT's workers spin ~50 ms after a run (sparsec/idle_threads.py).
IDLE_MAX_S = 0.2
TYPICAL_SPIN_S = 0.06
MIN_BLOCK, MAX_BLOCK = 4, 256


def block_calls(call_ms: float, block_ms: float = BLOCK_MS) -> int:
    """Calls per block so that a block lasts at least `block_ms` (within MIN_BLOCK..MAX_BLOCK)."""
    if call_ms <= 0:
        return MAX_BLOCK
    return max(MIN_BLOCK, min(MAX_BLOCK, math.ceil(block_ms / call_ms)))


@dataclass(frozen=True)
class Comparison:
    """`baseline` vs each contender: medians, per-round paired ratios and their noise."""

    timings: dict[str, Timing]
    speedups: dict[str, float]  # baseline median / contender median
    noise: dict[str, float]  # relative 95% half-width of each speedup (from per-round ratios)
    rounds: int
    per_round: dict[str, list[float]]  # each contender's per-round block median, ms

    def faster(self, name: str) -> bool:
        """The contender beats the baseline by more than the noise."""
        return self.speedups[name] > 1.0 + self.noise[name]


def compare_interleaved(
    baseline: str,
    fns: dict[str, Callable[[], Any]],
    *,
    budget_s: float = 10.0,
    min_rounds: int = 5,
    max_rounds: int = 60,
    block: int | None = None,
    warmup: int = 3,
    pause_s: float = 0.002,
    label: str = "benchmark",
    idle_wait: bool | None = None,
) -> Comparison:
    """Time `fns` interleaved and compare each with `baseline`.

    Each round runs every callable for a block of calls; before each block a short pause and
    (budget allowing) a wait until no other thread of the process runs (up to IDLE_MAX_S) let the previous
    contender's spinning workers (ONNX Runtime spins its pool ~50 ms after a run, the kernels'
    pool ~60 us) go idle, so they do not steal cores from the next one. The first
    quarter of each block (at least one call) is discarded: after the pause the first calls
    run slow. `block`: calls per block; None sizes each contender's block from its warm-up
    time (`block_calls`), at BLOCK_MS, or shorter where `min_rounds` of such blocks would
    overrun `budget_s` (a budget set that low asks for a quick look, not a careful one).
    Rounds continue until `budget_s` is spent (at least `min_rounds`). `idle_wait`: wait out
    spinning pools before each block (None: only where the budget has room for it).
    """
    block_ms = min(BLOCK_MS, max(1.0, 1e3 * budget_s / (max(min_rounds, 1) * max(len(fns), 1))))
    # Waiting out spinning pools costs ~50 ms a block: by default only where the budget has room
    # for it in min_rounds (the compile's 4 s check does; a test's quick look does not). The
    # tuner always asks for it.
    if idle_wait is None:
        idle_wait = budget_s >= max(min_rounds, 1) * len(fns) * (BLOCK_MS / 1e3 + TYPICAL_SPIN_S)
    blocks: dict[str, int] = {}
    for name, fn in fns.items():
        call_ms = math.inf  # the fastest warm-up call (the first ones pay for first-run set-up)
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            call_ms = min(call_ms, (time.perf_counter() - t0) * 1e3)
        blocks[name] = block if block is not None else block_calls(call_ms if warmup else 0.0, block_ms)
    names = list(fns)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    rounds = 0
    bar = tqdm(total=max_rounds, desc=label, unit="round", leave=False, disable=None)
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            if pause_s:
                time.sleep(pause_s)
                if idle_wait:
                    wait_for_idle_threads(IDLE_MAX_S)
            block_ms = []
            skip = max(1, blocks[name] // 4)
            for j in range(blocks[name]):
                t0 = time.perf_counter()
                fns[name]()
                if j >= skip:
                    block_ms.append((time.perf_counter() - t0) * 1e3)
            samples[name].extend(block_ms)
            per_round[name].append(statistics.median(block_ms))
        rounds += 1
        bar.update(1)
    bar.close()
    timings = {n: _summary(s) for n, s in samples.items()}
    speedups, noise = {}, {}
    for name in names:
        if name == baseline:
            continue
        speedups[name] = timings[baseline].median_ms / timings[name].median_ms
        noise[name] = _median_halfwidth(_log_ratios(per_round[baseline], per_round[name]))
    return Comparison(timings, speedups, noise, rounds, per_round)


def paired_noise(result: Comparison, a: str, b: str) -> float:
    """Relative 95% half-width of the ratio a/b from the rounds of an interleaved comparison."""
    return _median_halfwidth(_log_ratios(result.per_round[a], result.per_round[b]))


def _log_ratios(a: list[float], b: list[float]) -> list[float]:
    return [math.log(x / y) for x, y in zip(a, b, strict=True)]


def _median_halfwidth(logs: list[float]) -> float:
    """Relative 95% half-width of a median ratio from per-round log ratios (robust sigma from
    the MAD; the median's standard error is 1.2533 sigma / sqrt(n))."""
    if len(logs) < 2:
        return 1.0
    med = statistics.median(logs)
    mad = statistics.median(abs(v - med) for v in logs)
    sigma = 1.4826 * mad
    return math.expm1(1.96 * 1.2533 * sigma / math.sqrt(len(logs)))


def seconds_from_env(name: str, default: float, limit: float) -> float:
    """A time budget in seconds from environment variable `name` (`default` when unset);
    OptionError (one line) when it is not a number in (0, limit]."""
    import os

    from sparsec.errors import OptionError

    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"${name}={text!r}: expected seconds (e.g. {default:g})") from None
    if not 0.0 < value <= limit:
        raise OptionError(f"${name}={text!r}: expected seconds between 0 and {limit:g}")
    return value


def machine_info(**extra: Any) -> dict[str, Any]:
    """What every benchmark JSON records about the machine: lscpu's model name, caches and
    flags, the core count and the load average now (a timing means little without them)."""
    import os
    import platform
    import subprocess

    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count(),
                            "load_average": [round(v, 2) for v in os.getloadavg()]}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "L2 cache", "L3 cache", "Flags"):
            info[key.strip()] = value.strip()
    return {**info, **extra}


def emit_json(result: Any, out: Any = None) -> str:
    """Print a benchmark's JSON and, when `out` (a path) is given, write it there too."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=1)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text


def cuda_median_ms(torch: Any, fn: Callable[[], object], runs: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of `fn` on the current CUDA stream, timed with CUDA events
    (`torch` passed in: this module must not import it)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def profile_node_events(model: str | bytes, options: Any, feeds: Any, runs: int) -> tuple[list[dict[str, Any]], int]:
    """Run `model` `runs` times with ONNX Runtime's profiler on (`options` is a SessionOptions,
    changed to enable it); returns its per-node kernel events, each as {"node", "op", "ms",
    "args"}, and the number of runs it recorded. `feeds`: the inputs, or a function of the
    session that makes them."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(d, "ort")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        inputs = feeds(session) if callable(feeds) else feeds
        for _ in range(runs):
            session.run(None, inputs)
        with open(session.end_profiling()) as f:
            trace = json.load(f)
    recorded = sum(1 for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    events = [{"node": e["name"][: -len("_kernel_time")], "op": e["args"].get("op_name"), "ms": e["dur"] / 1000,
               "args": e["args"]}
              for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return events, max(recorded, 1)
