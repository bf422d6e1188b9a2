"""`sparsec compile MODEL --target=cpu --backend=tvm --sparsity=2:4` on exports nobody here
wrote: small BERT / GPT-2 / Llama / ViT (Hugging Face, random weights) and ResNet-18, each from
both of torch's exporters at opset 18 (tests/cuda/exports.py). The TVM artifact's outputs must
match ONNX Runtime running the artifact's own model.onnx (the same compiled graph).

What these exports needed (backends/tvm): ConstantOfShape of a constant scalar shape (the
TorchScript exporter's attention masks; TVM's converter fails on it), small integer
initializers as constants (the dynamo exporter stores Reshape targets and GatherND indices as
initializers: as weights they became shape outputs of the lifted weight transform), nests that
write bool masks kept scalar (LLVM rejects vector bool stores).

Cost on two cores: 3-8 s a case (export, compile with per-pass verification, one run). By
default one case per fix runs (GPT-2 TorchScript: the mask fixes; Llama dynamo: the integer
constants, and again with every initializer a weight, the shape-output binding); the other
eight are marked slow (the whole matrix: about a minute). `--no-bench`: the latency
measurement is not what is checked here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'sparsec[tvm]')")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from sparsec.cli.main import main  # noqa: E402
from sparsec.kernels import kernels_available  # noqa: E402
from sparsec.runtime import load, make_session  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec C kernels are not built")


def _exports_module() -> Any:
    """tests/cuda/exports.py (tests/ is not a package: loaded by path)."""
    path = Path(__file__).resolve().parent.parent / "cuda" / "exports.py"
    spec = importlib.util.spec_from_file_location("sparsec_test_exports", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


EXPORTS = _exports_module()
OPSET = 18  # the dynamo exporter's opset-17 GPT-2 is invalid ONNX (Split with num_outputs)
DEFAULT = {("gpt2", "torchscript"), ("llama", "dynamo")}


def _cases() -> list:
    return [pytest.param(f, e, marks=() if (f, e) in DEFAULT else (pytest.mark.slow,), id=f"{f}-{e}")
            for f in EXPORTS.FAMILIES for e in EXPORTS.EXPORTERS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("tvm_exports")

    def get(family: str, exporter: str) -> Path:
        path = folder / f"{family}_{exporter}.onnx"
        return path if path.exists() else EXPORTS.export(family, exporter, path, OPSET)

    return get


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEC_TVM_KERNEL_CACHE", str(tmp_path_factory.mktemp("tvm_kernels")))
        yield


def _feeds(session: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for value in session.get_inputs():
        shape = [int(d) for d in value.shape]
        if value.name == "attention_mask":  # padding at the end: the masked paths run too
            mask = np.ones(shape, np.int64)
            mask[..., -3:] = 0
            feeds[value.name] = mask
        elif "int64" in value.type:
            feeds[value.name] = rng.integers(0, 128, shape, dtype=np.int64)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def compile_and_compare(source: Path, out: Path) -> float:
    """Max abs difference TVM vs ORT on the compiled model.onnx; asserts it is small."""
    argv = ["compile", str(source), "--target=cpu", "--backend=tvm", "--sparsity=2:4", "--no-bench", "-o", str(out)]
    assert main(argv) == 0
    ort = make_session((out / "model.onnx").read_bytes())
    feeds = _feeds(ort)
    got = load(out).run(feeds)
    ref = ort.run(None, feeds)
    assert len(got) == len(ref)
    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and np.all(np.isfinite(g))
        worst = max(worst, float(np.max(np.abs(g - r))))
        assert worst <= 1e-4 * max(1.0, float(np.max(np.abs(r)))), worst
    return worst


@pytest.mark.parametrize(("family", "exporter"), _cases())
def test_export_compiles_with_tvm_and_matches_ort(family: str, exporter: str, exported, kernel_cache,  # noqa: ANN001
                                                  tmp_path: Path) -> None:
    compile_and_compare(exported(family, exporter), tmp_path / "out")


def test_shape_outputs_of_the_weight_transform_are_bound(exported, kernel_cache, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With every initializer a weight (no integer constants), Llama's Reshape targets are
    computed by the lifted weight transform, which then returns shapes, not tensors: they are
    bound into `main` as constants (params.bin holds tensors only)."""
    from sparsec.backends.tvm import importer

    monkeypatch.setattr(importer, "SHAPE_CONSTANT_MAX", 0)
    compile_and_compare(exported("llama", "dynamo"), tmp_path / "out")


def test_small_integer_initializers_are_constants(exported) -> None:  # noqa: ANN001
    """Llama's dynamo export keeps Reshape targets and GatherND indices as int64 initializers:
    they import as int64 constants (shapes fold), not weights, so the lifted weight transform
    returns tensors only."""
    import onnx
    from tvm import relax

    from sparsec.backends.tvm.build import TRANSFORM, _lift
    from sparsec.backends.tvm.importer import SHAPE_CONSTANT_MAX, import_onnx

    model = onnx.load(exported("llama", "dynamo"))
    small = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT64
             and int(np.prod(i.dims)) <= SHAPE_CONSTANT_MAX]
    assert small, "the export has no small int64 initializers: this test checks nothing"
    mod, params = import_onnx(model)
    assert not [name for name, v in params if v.dtype.kind in "iu" and v.size <= SHAPE_CONSTANT_MAX]
    assert "int32" not in mod.script()  # relax.const's default would make int64 indices int32
    _, transform = _lift(mod)
    outputs = transform[TRANSFORM].ret_ty.fields
    assert outputs and all(isinstance(t, relax.TensorType) for t in outputs)


def test_constant_of_shape_with_a_constant_scalar_shape_is_a_constant() -> None:
    import onnx
    from tvm import relax

    from sparsec.backends.tvm.importer import _constant_of_shape

    value = onnx.numpy_helper.from_array(np.array([1], np.int64))
    scalar = _constant_of_shape(relax.const(np.zeros(0, np.int64), "int64"), value)
    assert scalar.value.numpy().shape == () and scalar.value.numpy().dtype == np.int64
    block = _constant_of_shape(relax.ShapeExpr([2, 3]), None)
    assert np.array_equal(block.value.numpy(), np.zeros((2, 3), np.float32))
    assert _constant_of_shape(relax.Var("s", relax.ShapeType(ndim=2)), value) is None  # a run-time shape


def test_bool_stores_stay_scalar_and_compile() -> None:
    """A fused nest of bool buffers (a mask reshaped and combined with a constant mask, as in
    GPT-2's TorchScript export) under a float output: LoopNestCPU vectorizes the float stores
    and keeps the bool ones scalar, so LLVM compiles it."""
    import tvm
    from tvm import relax, s_tir
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.tirx import ForKind

    from sparsec.backends.tvm.build import relax_pipeline
    from sparsec.backends.tvm.schedules import schedule_pass
    from sparsec.backends.tvm.target_spec import host_spec

    causal = np.tril(np.ones((64, 64), bool))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            negative = bb.emit(relax.op.less(x, relax.const(0.0, "float32")))
            row = bb.emit(relax.op.reshape(negative, (1, 64)))
            mask = bb.emit(relax.op.logical_and(row, relax.const(causal, "bool")))
            out = bb.emit_output(relax.op.where(mask, relax.const(1.0, "float32"), relax.const(0.0, "float32")))
        bb.emit_func_output(out)
    target = host_spec().tvm_target()
    with target:
        scheduled = tvm.transform.Sequential([*cpu.legalize_passes(target), schedule_pass()])(bb.get())
    kinds: dict[str, list[bool]] = {"bool": [], "float32": []}
    for _, func in scheduled.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            dtype = str(sch.get(block).writes[0].source.dtype)
            kinds[dtype].append(any(sch.get(lp).kind == ForKind.VECTORIZED for lp in sch.get_loops(block)))
    assert kinds["bool"] and not any(kinds["bool"])
    assert kinds["float32"] and all(kinds["float32"])  # the rule ran: the float stores are vectorized
    ex = tvm.compile(bb.get(), target, relax_pipeline=relax_pipeline(target))
    data = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    assert np.array_equal(got, ((data < 0).reshape(1, 64) & causal).astype(np.float32))
