"""The TVM backend's batch-1 decode path: row reductions (LayerNorm) are computed once per row,
small loop nests run serially, session outputs stay valid across runs, and models whose
weights live in external-data files build (GPT-2 small's spilled weights failed to import).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'sparsec[tvm]')")

from sparsec.compiler import CompileOptions, compile_model  # noqa: E402
from sparsec.ir.io import load_model, write_model  # noqa: E402
from sparsec.kernels import kernels_available  # noqa: E402
from sparsec.testing import make_model, seeded  # noqa: E402


def _scheduled(relax_func_builder) -> dict[str, object]:
    """{PrimFunc name: scheduled PrimFunc} for a Relax module legalized as the backend does."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from sparsec.backends.tvm.schedules import schedule_pass
    from sparsec.backends.tvm.target_spec import host_spec

    target = host_spec().tvm_target()
    with target:
        mod = tvm.transform.Sequential([*cpu.legalize_passes(target), schedule_pass()])(relax_func_builder())
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _layer_norm_module(shape: tuple[int, ...]):
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor(shape, "float32"))
    g = relax.Var("g", R.Tensor((shape[-1],), "float32"))
    b = relax.Var("b", R.Tensor((shape[-1],), "float32"))
    with bb.function("main", [x, g, b]):
        y = bb.emit(relax.op.nn.layer_norm(x, g, b, axes=[-1]))
        bb.emit_func_output(y)
    return bb.get()


def _reduction_work(func) -> list[tuple[int, int]]:
    """(iterations of the body, rows x reduced elements) per reduction block of `func`."""
    from tvm import s_tir
    from tvm.tirx import IterVar

    sch = s_tir.Schedule(func)
    out = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        ivs = sch.get(block).iter_vars
        if not any(iv.iter_type == IterVar.CommReduce for iv in ivs):
            continue
        body = int(np.prod([int(sch.get(lp).extent) for lp in sch.get_loops(block)]))
        out.append((body, int(np.prod([int(iv.dom.extent) for iv in ivs]))))
    return out


@pytest.mark.parametrize("shape", [(1, 1, 768), (1, 128, 384)])
def test_layer_norm_reductions_run_once_per_row(shape: tuple[int, ...]) -> None:
    funcs = _scheduled(lambda: _layer_norm_module(shape))
    (func,) = [f for name, f in funcs.items() if "layer_norm" in name]
    work = _reduction_work(func)
    assert work, "layer_norm has no reduction blocks"
    for body, needed in work:
        assert body == needed  # not recomputed per output element (was 768x at batch 1)
    if shape[1] == 1:  # 768 elements: waking the thread pool costs more than the op
        assert "T.parallel" not in func.script()


def test_matmul_with_fused_epilogue_keeps_the_vectorized_loop_nest() -> None:
    """dlight's Reduction rule also matches matmul + bias + GELU after fusion and turns it
    into one scalar dot product per output element; the matmul must stay vectorized over N."""
    from tvm import relax, s_tir
    from tvm.script import relax as R
    from tvm.tirx import ForKind, IterVar

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 1, 256), "float32"))
    w = relax.Var("w", R.Tensor((256, 1024), "float32"))
    b = relax.Var("b", R.Tensor((1024,), "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(relax.op.matmul(x, w), b))
            y = bb.emit_output(relax.op.nn.gelu(h))
        bb.emit_func_output(y)
    funcs = _scheduled(bb.get)
    (func,) = [f for name, f in funcs.items() if "matmul" in name]
    sch = s_tir.Schedule(func)
    reductions = [blk for blk in sch.get_child_blocks(sch.get_sblock("root"))
                  if any(iv.iter_type == IterVar.CommReduce for iv in sch.get(blk).iter_vars)]
    assert reductions
    for blk in reductions:
        assert sch.get(sch.get_loops(blk)[-1]).kind == ForKind.VECTORIZED


def test_batch1_pointwise_conv_has_no_vector_loop_around_its_reduction() -> None:
    """dlight's GEMV rule vectorized 128 outputs around mobilenet's whole squeeze-excite
    reduction (1x1 conv 96 -> 384 at batch 1), which LLVM did not compile in minutes."""
    from tvm import relax, s_tir
    from tvm.script import relax as R
    from tvm.tirx import ForKind

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((1, 96, 1, 1), "float32"))
    w = relax.Var("w", R.Tensor((384, 96, 1, 1), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.sigmoid(relax.op.nn.conv2d(x, w)))
        bb.emit_func_output(y)
    (func,) = [f for name, f in _scheduled(bb.get).items() if "conv2d" in name]
    sch = s_tir.Schedule(func)
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(blk)
        assert all(sch.get(lp).kind != ForKind.VECTORIZED for lp in loops[:-1])


def test_layer_norm_decode_shape_matches_numpy() -> None:
    import tvm
    from tvm import relax

    from sparsec.backends.tvm.build import relax_pipeline
    from sparsec.backends.tvm.target_spec import host_spec

    target = host_spec().tvm_target()
    ex = tvm.compile(_layer_norm_module((1, 1, 768)), target, relax_pipeline=relax_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    x, g, b = (rng.standard_normal(s).astype(np.float32) for s in ((1, 1, 768), (768,), (768,)))
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (x, g, b))).numpy()
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-5) * g + b, rtol=1e-4, atol=1e-5)


# An output that is the input itself, one computed from it, and a weight-only output.
ALIASING = """
<ir_version: 10, opset_import: ["" : 18]>
alias (float[2,64] x) => (float[2,64] same, float[2,32] y, float[64,32] wout) {
  same = Identity(x)
  y = MatMul(x, w)
  wout = Identity(w)
}
"""


@pytest.mark.skipif(not kernels_available(), reason="sparsec C kernels are not built")
@pytest.mark.slow
def test_session_outputs_survive_the_next_run_and_external_weights_build(tmp_path: Path) -> None:
    from sparsec.backends.base import get_backend

    w = seeded((64, 32), 3)
    write_model(make_model(ALIASING, w=w), tmp_path / "alias.onnx", external=True)  # w in alias.onnx.data
    result = compile_model(load_model(tmp_path / "alias.onnx"),
                           CompileOptions(backend="tvm", sparsity="none", bench=False, fidelity_samples=1, tune=False))
    run = get_backend("tvm").runner(result.compiled)
    x1 = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    x2 = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    first = run({"x": x1})
    kept = [a.copy() for a in first]
    first[2][...] = 0  # the caller may write into its outputs: the weights must not change
    second = run({"x": x2})
    np.testing.assert_array_equal(first[0], kept[0])  # not overwritten by the second call's input
    np.testing.assert_array_equal(first[1], kept[1])
    np.testing.assert_array_equal(second[0], x2)
    np.testing.assert_allclose(second[1], x2 @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(second[2], w)
