"""Waiting out spinning pools between interleaved blocks (sparsec/idle_threads.py): a spinning
ONNX Runtime session's worker keeps a core busy after its run; the wait sees it and ends when
it stops; compare_interleaved waits only where its budget has room for it."""

from __future__ import annotations

import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

import sparsec.bench as bench
from sparsec.idle_threads import running_threads, wait_for_idle_threads
from sparsec.ir.io import model_bytes
from sparsec.runtime import plain_session_options
from sparsec.testing import make_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def _matmul_session(spinning: bool) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    text = ('<ir_version: 10, opset_import: ["" : 18]>\n'
            "g (float[64, 512] x) => (float[64, 512] y) {\n  y = MatMul(x, w)\n}")
    model = make_model(text, w=rng.standard_normal((512, 512)).astype(np.float32))
    session = ort.InferenceSession(model_bytes(model), plain_session_options(2, allow_spinning=spinning),
                                   providers=["CPUExecutionProvider"])
    return session, {"x": rng.standard_normal((64, 512)).astype(np.float32)}


def test_a_spinning_ort_worker_is_seen_and_waited_out() -> None:
    session, feeds = _matmul_session(spinning=True)
    for _ in range(20):
        session.run(None, feeds)
    assert running_threads() >= 1  # ORT's worker spins on after the run
    waited = wait_for_idle_threads(2.0)
    assert 0.0 < waited < 2.0
    assert running_threads() == 0


def test_no_wait_when_nothing_spins() -> None:
    session, feeds = _matmul_session(spinning=False)
    for _ in range(20):
        session.run(None, feeds)
    assert wait_for_idle_threads(1.0) < 0.5


def test_a_busy_thread_bounds_the_wait() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        waited = wait_for_idle_threads(0.05)
    finally:
        stop.set()
        busy.join()
    assert 0.05 <= waited < 1.0


@pytest.mark.parametrize(("budget_s", "waits"), [(0.05, False), (10.0, True)])
def test_compare_interleaved_waits_only_with_room_in_the_budget(monkeypatch: pytest.MonkeyPatch, budget_s: float,
                                                               waits: bool) -> None:
    calls: list[float] = []
    monkeypatch.setattr(bench, "wait_for_idle_threads", lambda max_s: calls.append(max_s) or 0.0)
    fns = {"a": lambda: None, "b": lambda: None}
    bench.compare_interleaved("a", fns, budget_s=budget_s, min_rounds=2, max_rounds=2, block=4)
    assert bool(calls) is waits
    if waits:
        assert len(calls) == 4 and all(c == bench.IDLE_MAX_S for c in calls)  # before every block
