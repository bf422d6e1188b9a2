"""Wait until this process's other threads stop running: the spinning pools of the last session.

ONNX Runtime's intra-op workers keep spinning after a run when the session allows spinning,
~50 ms on the AVX2 AMD EPYC with ORT 1.23 (process CPU while the caller sleeps). In a timing
that interleaves sessions in one process, a spinning session's worker holds one of two cores
through the next contender's block: a dense FFN timed 0.60 ms after a spinning MoE session's
block and 0.33 ms after a quiet one. A fixed pause shorter than the spin does not help, one
longer than it wastes the budget where nothing spins; this watches the threads instead
(Linux: each thread's state in /proc/self/task/*/stat, 'R' while it runs or spins).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TASKS = Path("/proc/self/task")
POLL_S = 0.001


def running_threads() -> int | None:
    """How many of this process's threads other than the caller are running now (None where
    /proc is not there to tell)."""
    me = threading.get_native_id()
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    running = 0
    for tid in tids:
        if tid == str(me):
            continue
        try:
            stat = (_TASKS / tid / "stat").read_bytes()
        except OSError:
            continue  # the thread ended
        # "tid (comm) S ...": the state follows the last ')' (comm may hold spaces or parens)
        running += stat[stat.rfind(b")") + 2 :][:1] == b"R"
    return running


def wait_for_idle_threads(max_s: float) -> float:
    """Sleep until no other thread of this process runs, at most `max_s` seconds; returns the
    seconds waited (0 where the threads cannot be seen)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_s and running_threads():
        time.sleep(POLL_S)
    return time.perf_counter() - start
