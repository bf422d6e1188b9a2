"""The state a pipeline run shares between passes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from sparsec.executor import Executor, LocalExecutor
from sparsec.pm.analysis import AnalysisManager

if TYPE_CHECKING:
    from sparsec.pm.analysis import Analysis


@dataclass
class PassContext:
    """Shared by the passes of one run.

    `decisions` collects one record per layer decision (which pass, which layer, what was
    chosen and why); the artifact's manifest lists them. `dims` gives values for symbolic
    input dimensions (batch, sequence) wherever shapes must be concrete.
    """

    target: str = "cpu"
    dims: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    calibration: Any = None
    threads: int = 2  # threads the compiled model runs with (what the tuner measures)
    tune: bool = True  # lowering choices from measurements on this machine (sparsec.tune), else fixed thresholds
    tuner: Any = None  # sparsec.tune.Tuner, created on first use
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)  # weight -> its tuner choice (manifest)
    # weight -> kernel variant to lower it with, unmeasured: the choices an artifact was compiled
    # with, replayed when `sparsec finetune` lowers its retrained weights again
    replay: dict[str, str] = field(default_factory=dict)
    dense_model: Any = None  # the model the pipeline started from (the teacher of `recover`); set by PassManager.run
    # feeds -> the input model's outputs, in place of numerics.evaluate for the pass manager's
    # reference run (the compile shares that run with its fidelity check: sparsec.calib.dense_share)
    evaluate_input: Any = None
    # (model, feeds, pass index) -> the model's outputs, in place of numerics.evaluate for the
    # check after each pass (the compile shares its last check with its fidelity check:
    # sparsec.calib.compiled_share)
    evaluate_output: Any = None
    repro_dir: Path | None = None
    executor: Executor = field(default_factory=LocalExecutor)  # where parallel work (sensitivity trials) runs
    analyses: AnalysisManager = field(default_factory=AnalysisManager)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("sparsec"))

    def analysis(self, analysis: type[Analysis], model: ir.Model) -> Any:
        return self.analyses.get(analysis, model, self)

    def record(self, pass_name: str, layer: str, **info: Any) -> None:
        self.decisions.append({"pass": pass_name, "layer": layer, **info})
