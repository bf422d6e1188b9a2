"""ONNX -> Relax: TVM's ONNX importer, plus the sparsec kernel ops as packed-function calls.

Standard ops go through `tvm.relax.frontend.onnx` (its converters, unchanged). The kernel
ops that `lower-nm-kernels` leaves in the domain `com.sparsec.kernels` become
`R.call_dps_packed("sparsec_nm_matmul", ...)`: calls into sparsec's C kernels, which
`backends/tvm/kernel_objects.py` links into the model library (kernels/tvm_packed/sk_tvm_ffi.c).
With `nm_lowering="tir"`, 2:4-style (M=4, C a multiple of 16) NMSparseMatMul becomes
`R.call_tir` of a scheduled TIR PrimFunc on the same packed buffers (backends/tvm/nm_tir.py)
instead; the packed call stays the default (faster here: bench/tvm_bench.py --mode tir).
Weights stay graph inputs (`keep_params_in_input`) so they ship as a parameter file, not
inside the library.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx

from sparsec.errors import UnsupportedError

KERNEL_DOMAIN = "com.sparsec.kernels"
NM_FUNC = "sparsec_nm_matmul"
NM_BIAS_FUNC = "sparsec_nm_matmul_bias"
BLOCK_FUNC = "sparsec_block_matmul"
KERNEL_OPS = ("NMSparseMatMul", "BlockSparseMatMul")
NM_LOWERINGS = ("packed", "tir")
# Integer/bool initializers up to this many elements are imported as constants, not weights:
# exporters store Reshape/Expand/Slice targets, axes and small masks as initializers, and as
# weights (`keep_params_in_input`) they would make those shapes run-time values (dynamic-shape
# ops, shape outputs of the lifted weight transform) instead of folding at import.
SHAPE_CONSTANT_MAX = 64


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """One line per op TVM's importer cannot convert (naming the op, its domain and a node)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    seen: dict[tuple[str, str], str] = {}
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if node.op_type in ("Constant", "If"):
            continue
        if domain == KERNEL_DOMAIN and node.op_type in KERNEL_OPS:
            continue
        if domain not in ("ai.onnx", "") or node.op_type not in known:
            seen.setdefault((domain, node.op_type), node.name)
    return [f"op {d}.{op} (node '{name}') has no TVM importer converter" for (d, op), name in sorted(seen.items())]


def _nm_tir_call(bb: Any, x: Any, inputs: list[Any], n: int, m: int, cols: int, has_bias: bool) -> Any:
    """NMSparseMatMul as call_tir of the TIR PrimFunc: x flattened to [rows, K] and back."""
    from tvm import relax, tirx

    from sparsec.backends.tvm.nm_tir import nm_matmul_primfunc

    shape = list(x.ty.shape)
    k = int(shape[-1])
    lead = shape[:-1]
    rows_expr = 1
    for d in lead:
        rows_expr = rows_expr * d
    static = all(isinstance(d, tirx.IntImm) for d in lead)
    rows: Any = int(np.prod([int(d) for d in lead])) if static else tirx.Var("rows", "int64")
    name = f"sparsec_nm_tir_{n}of{m}_{k}x{cols}" + ("" if static else "_dyn")
    gv = bb.add_func(nm_matmul_primfunc(rows, k, cols, n, m).with_attr("global_symbol", name), name)
    x2 = x if len(shape) == 2 else bb.normalize(relax.op.reshape(x, [rows_expr, k]))
    y = bb.normalize(relax.call_tir(gv, [x2, inputs[1], inputs[2]], relax.TensorType([rows_expr, cols], "float32")))
    if len(shape) != 2:
        y = bb.normalize(relax.op.reshape(y, [*lead, cols]))
    return relax.op.add(y, inputs[3]) if has_bias else y


def _kernel_call(op_type: str, inputs: list[Any], attrs: dict[str, Any], bb: Any = None,
                 nm_lowering: str = "packed") -> Any:
    from tvm import relax

    from sparsec.backends.tvm.nm_tir import supports

    x = inputs[0]
    shape = list(x.ty.shape)
    cols = int(attrs["N"])
    out = relax.TensorType([*shape[:-1], cols], "float32")
    if op_type == "NMSparseMatMul" and nm_lowering == "tir" and supports(int(attrs["n"]), int(attrs["m"]), cols):
        return _nm_tir_call(bb, x, inputs, int(attrs["n"]), int(attrs["m"]), cols, bool(int(attrs.get("has_bias", 0))))
    if op_type == "NMSparseMatMul":
        n, m = relax.prim_value(int(attrs["n"])), relax.prim_value(int(attrs["m"]))
        if int(attrs.get("has_bias", 0)):
            return relax.call_dps_packed(NM_BIAS_FUNC, relax.Tuple([x, inputs[1], inputs[2], inputs[3], n, m]), out)
        return relax.call_dps_packed(NM_FUNC, relax.Tuple([x, inputs[1], inputs[2], n, m]), out)
    if int(attrs.get("has_bias", 0)):
        y = relax.call_dps_packed(BLOCK_FUNC, relax.Tuple([x, *inputs[1:4], relax.prim_value(int(attrs["bk"]))]), out)
        return relax.op.add(y, inputs[4])
    return relax.call_dps_packed(BLOCK_FUNC, relax.Tuple([x, *inputs[1:4], relax.prim_value(int(attrs["bk"]))]), out)


def importer_base() -> type:
    """TVM's ONNX importer with sparsec's changes, the base of the tvm and tvm-cuda importers:
    unsupported ops are checked before (`unsupported_ops`, naming nodes), small integer/bool
    initializers are constants (SHAPE_CONSTANT_MAX), ConstantOfShape of a constant shape is
    a constant."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as f

    class SparsecImporter(f.ONNXGraphImporter):
        def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
            pass  # done before, with node names

        def _parse_graph_initializers(self, graph: onnx.GraphProto) -> None:
            super()._parse_graph_initializers(graph)  # all as weights (keep_params_in_input) ...
            for init in graph.initializer:  # ... then the small integer ones become constants
                if _is_shape_constant(init):
                    _, array = self._params.pop(init.name.removeprefix("onnx::"))  # the key TVM's parser uses
                    array = array.numpy()
                    self._nodes[init.name] = relax.const(array, str(array.dtype))  # relax.const alone makes int64 int32

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name == "ConstantOfShape":
                folded = _constant_of_shape(inputs[0], attrs.get("value"))
                if folded is not None:
                    return self.bb.normalize(folded)
            return super()._convert_operator(op_name, inputs, attrs, opset)

    return SparsecImporter


def import_onnx(model: onnx.ModelProto, nm_lowering: str = "packed") -> tuple[Any, list[tuple[str, Any]]]:
    """(Relax IRModule whose `main` takes the model inputs then the weights, [(weight name,
    numpy value)] in that order). Unsupported ops raise UnsupportedError naming them.
    `nm_lowering`: "packed" (the C kernel, default) or "tir" (backends/tvm/nm_tir.py)."""
    if nm_lowering not in NM_LOWERINGS:
        raise UnsupportedError(f"backend 'tvm': nm_lowering must be one of {NM_LOWERINGS}, got {nm_lowering!r}")

    problems = unsupported_ops(model)
    if problems:
        raise UnsupportedError(f"backend 'tvm' cannot import this model: {problems[0]}")

    class _Importer(importer_base()):
        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name in KERNEL_OPS:
                return self.bb.normalize(_kernel_call(op_name, list(inputs), attrs, self.bb, nm_lowering))
            return super()._convert_operator(op_name, inputs, attrs, opset)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _Importer({}, "float32", keep_params_in_input=True, sanitize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # renamed inputs etc.: names are kept by position
        try:
            mod = importer.from_onnx(model.graph, opset)
        except UnsupportedError:
            raise
        except Exception as e:  # a converter's own failure: say which op
            raise UnsupportedError(f"backend 'tvm': TVM's ONNX importer failed: {_first_line(e)}") from None
    params = [(name, value.numpy()) for name, (_, value) in importer._params.items()]
    return mod, params


def _is_shape_constant(init: onnx.TensorProto) -> bool:
    """A small integer or bool initializer (a shape, axes, indices, a mask): a constant."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    return np.dtype(dtype).kind in "iub" and int(np.prod(init.dims)) <= SHAPE_CONSTANT_MAX


def _constant_of_shape(shape: Any, value: Any) -> Any:
    """ConstantOfShape of a constant shape as a Relax constant; None when the shape is not
    constant. TVM's converter folds only 1-D outputs and fails on the scalar case (shape [])
    that the TorchScript exporter emits for HF attention masks."""
    from tvm import ir, relax, tirx

    if isinstance(shape, relax.ShapeExpr) and all(isinstance(d, tirx.IntImm) for d in shape.values):
        dims = [int(d) for d in shape.values]
    elif isinstance(shape, ir.GenericConst):
        dims = [int(d) for d in shape.value.numpy().reshape(-1)]
    else:
        return None
    fill = onnx.numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    return relax.const(np.full(dims, fill, dtype=fill.dtype), str(fill.dtype))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
