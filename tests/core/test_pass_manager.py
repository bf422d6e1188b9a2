from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sparsec.errors import PassCrashed, SparsecError, VerificationError
from sparsec.passes.analysis.cost_model import CostModel
from sparsec.pm import Pass, PassContext, PassManager, PassResult, parse_pipeline
from sparsec.pm.instruments import IRDumpDir, PassStatistics, PassTiming, PrintIRAfter


@dataclass(frozen=True)
class DropRelu(Pass):
    """A buggy pass: removes Relu but leaves its output in use."""

    name = "test-drop-relu"

    def run(self, model, ctx):
        node = next(n for n in model.graph if n.op_type == "Relu")
        model.graph.remove(node)
        return PassResult(True)


@dataclass(frozen=True)
class ScaleWeights(Pass):
    """Claims to be exact but changes numbers."""

    name = "test-scale-weights"

    def run(self, model, ctx):
        w = model.graph.initializers["w2"]
        w.const_value = ir.tensor(w.const_value.numpy() * 2, name="w2")
        return PassResult(True)


@dataclass(frozen=True)
class Crash(Pass):
    name = "test-crash"

    def run(self, model, ctx):
        raise RuntimeError("boom")


@dataclass(frozen=True)
class UsesCosts(Pass):
    name = "test-uses-costs"
    changes: bool = False
    preserves = ()

    def run(self, model, ctx):
        ctx.analysis(CostModel, model)
        return PassResult(self.changes)


def test_runs_and_records_lossy_error(mlp) -> None:
    records = PassManager(parse_pipeline("nm-sparsity{min_params=0},legalize-dense")).run(mlp, PassContext())
    nm, legal = records
    assert nm.changed and not nm.exact
    assert 0.3 < nm.fidelity.worst_cosine < 1.0  # lossy: error reported, not hidden
    assert nm.stats["layers_pruned"] == 2
    assert legal.fidelity.rel_l2 == pytest.approx(0.0, abs=1e-7)  # exact lowering


def test_verify_each_names_pass_and_node_and_writes_reproducer(mlp, tmp_path) -> None:
    ctx = PassContext(repro_dir=tmp_path / "repro")
    pm = PassManager([DropRelu(), parse_pipeline("nm-sparsity{n=1 m=8}").passes[0]])
    with pytest.raises(VerificationError) as info:
        pm.run(mlp, ctx)
    message = str(info.value)
    assert "after pass 'test-drop-relu'" in message and "used before it is defined" in message
    assert info.value.pass_name == "test-drop-relu"
    pipeline_text = (tmp_path / "repro" / "pipeline.txt").read_text().strip()
    # The remaining pipeline with every default spelled out.
    assert pipeline_text.startswith("test-drop-relu,nm-sparsity{n=1 m=8 criterion=magnitude") and "min_params=1024" in pipeline_text
    # The reproducer holds the model as it was before the failing pass ran.
    repro_input = onnx.load(tmp_path / "repro" / "input.onnx")
    assert [n.op_type for n in repro_input.graph.node] == ["Gemm", "Relu", "MatMul"]


def test_exact_pass_that_changes_outputs_fails(mlp) -> None:
    with pytest.raises(VerificationError, match="exact pass changed the outputs"):
        PassManager([ScaleWeights()]).run(mlp, PassContext())


def test_crashing_pass_is_named_as_an_internal_error(mlp, tmp_path) -> None:
    # A crash is a bug in the pass, not a verification failure of the IR (nor a user error).
    with pytest.raises(PassCrashed, match="pass 'test-crash' crashed: RuntimeError: boom") as info:
        PassManager([Crash()]).run(mlp, PassContext(repro_dir=tmp_path / "repro"))
    assert not isinstance(info.value, SparsecError) and info.value.exit_code == 1
    assert isinstance(info.value.__cause__, RuntimeError)
    assert (tmp_path / "repro" / "input.onnx").exists()


def test_invalid_input_is_refused_before_any_pass(mlp) -> None:
    relu = next(n for n in mlp.graph if n.op_type == "Relu")
    mlp.graph.remove(relu)
    with pytest.raises(VerificationError, match="after pass 'input'"):
        PassManager([]).run(mlp, PassContext())


def test_analyses_are_cached_until_a_pass_changes_the_model(mlp) -> None:
    ctx = PassContext()
    PassManager([UsesCosts(), UsesCosts()], verify_numerics=False).run(mlp, ctx)
    assert ctx.analyses.computed == ["cost-model"]
    PassManager([UsesCosts(changes=True), UsesCosts()], verify_numerics=False).run(mlp, ctx)
    assert ctx.analyses.computed == ["cost-model", "cost-model"]


def test_instruments(mlp, tmp_path) -> None:
    out, err = io.StringIO(), io.StringIO()
    instruments = [PrintIRAfter(None, out), IRDumpDir(tmp_path / "dump"), PassTiming(err), PassStatistics(err)]
    PassManager(parse_pipeline("nm-sparsity{min_params=0},legalize-dense"), instruments=instruments).run(
        mlp, PassContext()
    )
    text = out.getvalue()
    assert text.count("// ----- IR after") == 2
    assert "com.sparsec.NMSparse<axis=1, m=4, n=2>(%w1)" in text
    dumps = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumps == ["00_input.txt", "01_nm-sparsity.txt", "02_legalize-dense.txt"]
    assert "pass execution timing" in err.getvalue() and "layers_pruned: 2" in err.getvalue()


def test_print_ir_after_selected_pass_only(mlp) -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("nm-sparsity{min_params=0},legalize-dense"),
                instruments=[PrintIRAfter(["legalize-dense"], out)]).run(mlp, PassContext())
    assert out.getvalue().count("// ----- IR after") == 1
    assert "NMSparse" not in out.getvalue()
    np.testing.assert_equal(True, "legalize-dense" in out.getvalue())
