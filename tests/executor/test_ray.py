"""The Ray executor gives exactly the local results (one local 2-CPU Ray instance per module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.errors import OptionError
from sparsec.executor import LocalExecutor
from sparsec.passes.analysis.sensitivity import scan_sensitivity
from sparsec.passes.sparsify.options import LayerSelection
from sparsec.passes.sparsify.patterns import parse_pattern
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model, mlp_model, seeded

ray = pytest.importorskip("ray")

from sparsec.executor.ray_executor import RayExecutor  # noqa: E402  (needs ray)

CANDIDATES = ["2:4", "1:4", "4:8", "u:0.5"]


def _model() -> ir.Model:
    """Gemm 32->64, Relu, MatMul 64->64, Relu, MatMul 64->16: layers h, h2, y."""
    return mlp_model("N", (32, 64, 64, 16), gemm_first=True)


def _calib() -> CalibrationData:
    rng = np.random.default_rng(7)
    return CalibrationData({"x": rng.standard_normal((48, 32)).astype(np.float32)}, batch_size=16)


@pytest.fixture(scope="module")
def ray_executor():  # noqa: ANN201
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield RayExecutor()  # joins the running instance (and leaves it running)
    finally:
        ray.shutdown()


def _fail(x: int) -> int:
    if x == 2:
        raise OptionError("task 2 refuses")
    return x


def test_map_keeps_task_order_and_user_errors(ray_executor: RayExecutor) -> None:
    assert ray_executor.map(abs, list(range(-5, 5))) == [abs(x) for x in range(-5, 5)]
    with pytest.raises(OptionError, match="task 2 refuses"):
        ray_executor.map(_fail, [1, 2, 3])


@pytest.mark.parametrize(("criterion", "metric"), [("wanda", "output"), ("sparsegpt", "output"), ("magnitude", "proxy")])
def test_sensitivity_table_is_exactly_local(ray_executor: RayExecutor, criterion: str, metric: str) -> None:
    model, calib = _model(), _calib()
    kwargs = {
        "criterion": criterion, "metric": metric, "samples": 32, "selection": LayerSelection(min_params=1),
        "use_cache": False, "progress": False,
    }
    patterns = [parse_pattern(c) for c in CANDIDATES]
    local = scan_sensitivity(model, calib, patterns, executor=LocalExecutor(), **kwargs)
    remote = scan_sensitivity(model, calib, patterns, executor=ray_executor, **kwargs)
    assert list(local.damage) == ["h", "h2", "y"] and all(len(c) == len(CANDIDATES) for c in local.damage.values())
    assert len({d for c in local.damage.values() for d in c.values()}) == 3 * len(CANDIDATES)  # real, distinct numbers
    assert remote.damage == local.damage  # bit for bit, in the same order
    assert list(remote.damage) == list(local.damage)
    assert (remote.weights, remote.skipped) == (local.weights, local.skipped)


def test_pass_uses_context_executor(ray_executor: RayExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path))  # no table from an earlier run
    text = "layer-sensitivity{candidates=2:4,1:8 criterion=wanda samples=16 min_params=1}"
    records = []
    for executor in (LocalExecutor(), ray_executor):
        for old in tmp_path.rglob("*.json"):
            old.unlink()
        ctx = PassContext(calibration=_calib(), executor=executor)
        PassManager(parse_pipeline(text)).run(_model(), ctx)
        records.append([d for d in ctx.decisions if d["pass"] == "layer-sensitivity"])
    assert len(records[0]) == 3 and records[0] == records[1]


PARALLEL = """
<ir_version: 10, opset_import: ["" : 18]>
par (float[N, 32] x) => (float[N, 16] y) {
    h1 = Gemm <transB = 1> (x, w1, b1)
    h2 = MatMul(x, w2)
    s = Add(h1, h2)
    r = Relu(s)
    y = MatMul(r, w3)
}
"""


class _Counting:
    """The module's Ray executor, noting which task functions it ran and how many tasks."""

    def __init__(self, inner: RayExecutor) -> None:
        self.inner, self.name, self.ran = inner, inner.name, []

    def map(self, fn, tasks, **kw):  # noqa: ANN001, ANN003, ANN201
        self.ran.append((fn.__name__, len(tasks)))
        return self.inner.map(fn, tasks, **kw)

    def parallelism(self) -> int:
        return self.inner.parallelism()

    def share(self, value):  # noqa: ANN001, ANN201
        return self.inner.share(value)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("sequential", [True, False])
def test_reconstruction_is_exactly_local(ray_executor: RayExecutor, sequential: bool) -> None:
    """sparsegpt: the two layers of the first stage are pruned as Ray tasks."""
    pipeline = f"nm-sparsity{{criterion=sparsegpt min_params=1 sequential={int(sequential)}}}"
    models = []
    counting = _Counting(ray_executor)
    for executor in (LocalExecutor(), counting):
        model = make_model(PARALLEL, w1=seeded((64, 32), 1), b1=seeded((64,), 2), w2=seeded((32, 64), 3), w3=seeded((64, 16), 4))
        ctx = PassContext(calibration=_calib(), executor=executor)
        PassManager(parse_pipeline(pipeline)).run(model, ctx)
        decisions = [d for d in ctx.decisions if d["pass"] == "nm-sparsity"]
        models.append((decisions, {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}))
    (local_decisions, local_weights), (ray_decisions, ray_weights) = models
    assert [d["decision"] for d in local_decisions] == ["2:4"] * 3 and local_decisions == ray_decisions
    assert local_weights.keys() == ray_weights.keys()
    assert all(np.array_equal(local_weights[n], ray_weights[n]) for n in local_weights)
    assert not np.array_equal(local_weights["b1"], seeded((64,), 2))  # the bias was refitted (in a task)
    # Sequential: the first stage's two layers as tasks (the last stage has one: pruned here).
    assert counting.ran == ([("_prune_task", 2)] if sequential else [("_prune_task", 3)])


def _attention_export(path: Path) -> Path:
    """The attention tests' tiny GPT-2 export (static batch 1: one calibration sample per batch)."""
    import importlib.util

    import onnx

    spec = importlib.util.spec_from_file_location("_attention_fixtures", Path(__file__).parents[1] / "attention" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(fixtures)  # type: ignore[union-attr]
    onnx.save(fixtures.export("gpt2", "legacy"), path)
    return path


def test_head_profiles_are_exactly_local(ray_executor: RayExecutor, tmp_path: Path) -> None:
    from sparsec.ir.io import load_model

    path = _attention_export(tmp_path / "gpt2.onnx")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (6, 16))
    calib = CalibrationData({"input_ids": ids, "attention_mask": np.ones((6, 16), np.int64)}, batch_size=1)
    assert ray_executor.parallelism() == 2  # so the 6 samples go out as 2 chunks of 3 batches
    found = []
    counting = _Counting(ray_executor)
    for executor in (LocalExecutor(), counting):
        ctx = PassContext(calibration=calib, executor=executor)
        PassManager(parse_pipeline("sparse-attention{layout=auto density=0.5 block=4}")).run(load_model(str(path)), ctx)
        found.append([d for d in ctx.decisions if d["pass"] == "sparse-attention"])
    assert len(found[0]) == 2 and all(len(d["head_error"]) == 4 for d in found[0])
    assert found[0] == found[1]  # the same per-head errors and layouts, bit for bit
    assert ("_profile_chunk", 2) in counting.ran


def test_cli_opt_runs_the_scan_on_ray(ray_executor: RayExecutor, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsec.cli.main import main
    from sparsec.ir.io import save_model

    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path / "cache"))
    save_model(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **_calib().arrays)
    pipeline = "layer-sensitivity{candidates=2:4 samples=8 min_params=1}"
    argv = ["opt", str(tmp_path / "m.onnx"), "-p", pipeline, "--calib", str(tmp_path / "c.npz"), "--executor=ray"]
    assert main(argv) == 0  # joins the module's instance (ray.init is not repeated)
    assert "layer sensitivity: 3 layers x 1 candidates on executor ray" in capsys.readouterr().err
    assert ray.is_initialized()  # the CLI did not start, so did not stop, the instance
