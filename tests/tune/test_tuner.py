"""The tuner: real measurements of tiny shapes in ORT sessions, cached per CPU signature."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from sparsec.bench import Comparison
from sparsec.kernels import kernels_available
from sparsec.tune import DENSE, LayerShape, TuneCache, Tuner, cpu_signature, variants_for
from sparsec.tune.signature import cache_dir
from sparsec.tune.tuner import _best_variant, _preferred

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")

TINY = LayerShape("matmul", (64, 32), rows=1, n=2, m=4, threads=2)


def test_the_real_tuner_times_dense_and_each_kernel_variant() -> None:
    tuner = Tuner(threads=2)
    choice = tuner.choose(TINY)
    assert tuner.measured == 1 and not choice.cached
    assert choice.dense_us is not None and choice.dense_us > 0
    assert choice.sparse_us is not None and choice.sparse_us > 0
    assert choice.sparse_variant in variants_for("matmul") and choice.sparse_variant != DENSE
    assert choice.variant in (DENSE, choice.sparse_variant)
    assert choice.variants_us is not None and set(choice.variants_us) == set(variants_for("matmul"))
    assert choice.variants_us[DENSE] == choice.dense_us
    assert choice.variants_us[choice.sparse_variant] == choice.sparse_us
    fastest = min((k for k in choice.variants_us if k != DENSE), key=choice.variants_us.__getitem__)
    # The fastest, or the general form of a restricted variant it did not beat beyond noise.
    assert choice.sparse_variant in (fastest, variants_for("matmul")[fastest].restricts)
    # The choice follows the times: sparse only when faster beyond the measured noise.
    if choice.sparse:
        assert choice.dense_us > choice.sparse_us * (1 + choice.noise)
    assert "dense" in choice.reason


def test_results_are_cached_per_cpu_signature_and_reused() -> None:
    first = Tuner(threads=2).choose(TINY)
    path = TuneCache().path
    assert path.parent == cache_dir() and str(path).startswith(os.environ["XDG_CACHE_HOME"])
    data = json.loads(path.read_text())
    assert data["signature"] == cpu_signature()
    assert {"cpu", "flags_sha", "cores", "onnxruntime", "sparsec"} <= set(data["signature"])
    assert TINY.key in data["entries"]
    again = Tuner(threads=2)  # a new process would read the same file
    second = again.choose(TINY)
    assert second.cached and again.measured == 0
    assert (second.dense_us, second.sparse_us, second.variant) == (first.dense_us, first.sparse_us, first.variant)
    # Another shape, thread count or copy count is another key.
    assert LayerShape("matmul", (64, 32), 1, 2, 4, threads=1).key != TINY.key
    assert LayerShape("matmul", (64, 32), 1, 2, 4, 2, copies=2).key != TINY.key


def test_another_machine_signature_does_not_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    Tuner(threads=2).choose(TINY)
    monkeypatch.setenv("SPARSEC_KERNEL_ISA", "scalar")  # the kernels run other code: other results
    other = TuneCache()
    assert other.path != TuneCache(signature={**cpu_signature(), "kernel_env": {}}).path
    assert other.get(TINY.key) is None


def test_an_entry_timed_under_another_protocol_is_measured_again() -> None:
    Tuner(threads=2).choose(TINY)
    cache = TuneCache()
    cache.put(TINY.key, {**cache.get(TINY.key), "protocol": "blocks of 4 calls, the first discarded"})
    tuner = Tuner(threads=2)
    assert not tuner.choose(TINY).cached and tuner.measured == 1


def test_a_tie_timed_on_a_busier_machine_is_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import sparsec.latency

    Tuner(threads=2).choose(TINY)
    cache = TuneCache()
    busy_tie = {**cache.get(TINY.key), "variant": DENSE, "dense_us": 16.0, "sparse_us": 10.6, "noise": 0.72,
                "load_average": [4.7, 4.1, 4.3]}
    cache.put(TINY.key, busy_tie)
    monkeypatch.setattr(sparsec.latency, "load_average", lambda: [1.2, 2.0, 3.0])
    tuner = Tuner(threads=2)
    assert not tuner.choose(TINY).cached and tuner.measured == 1
    # Not when it is as busy now, nor when the busy answer was clear (low noise, or sparse slower).
    for entry, now in ((busy_tie, [4.5, 4, 4]), ({**busy_tie, "noise": 0.05}, [1.2, 2, 3]),
                       ({**busy_tie, "sparse_us": 20.0}, [1.2, 2, 3])):
        TuneCache().put(TINY.key, entry)
        monkeypatch.setattr(sparsec.latency, "load_average", lambda now=now: now)
        assert Tuner(threads=2).choose(TINY).cached


def test_a_broken_cache_file_is_measured_again(tmp_path: Path) -> None:
    cache = TuneCache(directory=tmp_path)
    cache.path.write_text("{not json")
    tuner = Tuner(threads=2, cache=TuneCache(directory=tmp_path))
    assert not tuner.choose(TINY).cached and tuner.measured == 1
    assert json.loads(cache.path.read_text())["entries"][TINY.key]


def test_op_kinds_without_variants_stay_dense_and_are_not_cached() -> None:
    tuner = Tuner(threads=2)
    choice = tuner.choose(LayerShape("no-such-op", (8, 8), 1, 2, 4, 2))
    assert not choice.sparse and "no variants registered" in choice.reason
    assert tuner.measured == 0 and not tuner.cache.entries


def test_forget_answers_only_from_new_measurements(tmp_path: Path) -> None:
    # `sparsec tune --retune`: every put merges the file back in (other processes write it
    # too), which used to bring all old answers back after the first shape was measured again.
    old = TuneCache(tmp_path)
    old.put("shape-a", {"variant": DENSE})
    old.put("shape-b", {"variant": DENSE})
    cache = TuneCache(tmp_path)
    cache.forget()
    assert cache.get("shape-a") is None and cache.get("shape-b") is None
    cache.put("shape-a", {"variant": "nm-kernel"})
    assert cache.get("shape-a") == {"variant": "nm-kernel"}
    assert cache.get("shape-b") is None  # still to be measured again
    assert "shape-b" in json.loads(cache.path.read_text())["entries"]  # kept on disk for others


def _comparison(rounds: dict[str, list[float]]) -> Comparison:
    from sparsec.bench import Timing

    timings = {n: Timing(statistics.median(v), min(v), max(v), len(v)) for n, v in rounds.items()}
    speedups = {n: timings[DENSE].median_ms / t.median_ms for n, t in timings.items() if n != DENSE}
    return Comparison(timings, speedups, dict.fromkeys(speedups, 0.01), len(rounds[DENSE]), rounds)


def test_a_one_thread_variant_wins_only_beyond_the_noise_of_its_general_form() -> None:
    table = variants_for("matmul")
    runnable = ["nm-kernel", "nm-kernel-1t"]  # both faster than dense beyond noise
    # The LM head's look: one thread 6.07 ms vs two 6.86 ms by median, rounds all over the place.
    tie = _comparison({DENSE: [10.0, 9.0, 11.0, 10.5, 9.5], "nm-kernel": [9.0, 5.0, 6.86, 8.0, 6.0],
                       "nm-kernel-1t": [6.07, 7.0, 5.5, 6.5, 8.5]})
    assert tie.speedups["nm-kernel-1t"] > tie.speedups["nm-kernel"]
    assert _preferred("nm-kernel-1t", tie, table, runnable) == "nm-kernel"
    # A small layer where waking the second thread costs every round: one thread wins.
    clear = _comparison({DENSE: [10.0, 10.2, 9.9, 10.1, 10.0], "nm-kernel": [6.0, 6.1, 5.9, 6.0, 6.05],
                         "nm-kernel-1t": [4.0, 4.1, 3.95, 4.02, 4.0]})
    assert _preferred("nm-kernel-1t", clear, table, runnable) == "nm-kernel-1t"
    # The general form cannot run this shape, or does not beat dense beyond noise: nothing to prefer.
    assert _preferred("nm-kernel-1t", tie, table, ["nm-kernel-1t"]) == "nm-kernel-1t"
    assert _preferred("nm-kernel", tie, table, runnable) == "nm-kernel"


def test_the_best_variant_prefers_the_general_form_only_among_winners() -> None:
    table = variants_for("matmul")
    runnable = ["nm-kernel", "nm-kernel-1t"]
    # Two threads tie with dense, one thread clearly beats it: one thread, though the two
    # kernel variants are within noise of each other.
    small = _comparison({DENSE: [10.0, 10.1, 9.9, 10.0, 10.05], "nm-kernel": [9.0, 10.5, 8.0, 11.0, 9.5],
                         "nm-kernel-1t": [8.0, 8.1, 7.9, 8.05, 8.0]})
    small.noise.update({"nm-kernel": 0.3, "nm-kernel-1t": 0.02})
    assert not small.faster("nm-kernel") and small.faster("nm-kernel-1t")
    assert _best_variant(small, table, runnable) == "nm-kernel-1t"
    # Both beat dense, one thread by a hair within noise: the general form.
    both = _comparison({DENSE: [10.0, 10.1, 9.9, 10.0, 10.05], "nm-kernel": [6.0, 7.0, 5.0, 6.5, 5.5],
                        "nm-kernel-1t": [5.9, 5.5, 6.6, 5.0, 6.2]})
    both.noise.update({"nm-kernel": 0.1, "nm-kernel-1t": 0.1})
    assert _best_variant(both, table, runnable) == "nm-kernel"


def test_a_rebuilt_kernel_library_does_not_reuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # same sparsec version, other kernel code (a rebuild): its measurements are its own
    from sparsec.kernels import _native
    from sparsec.tune import signature

    Tuner(threads=2).choose(TINY)
    built = TuneCache()
    assert built.signature["kernels"] == signature.kernel_library_digest() is not None
    rebuilt = tmp_path / "lib.so"
    rebuilt.write_bytes(Path(_native.library_path()).read_bytes() + b"\0")
    monkeypatch.setattr(_native, "library_path", lambda: str(rebuilt))
    other = TuneCache()
    assert other.path != built.path and other.get(TINY.key) is None
