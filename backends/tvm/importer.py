"""ONNX -> Relax: TVM's ONNX importer, plus the sparsec kernel ops as packed-function calls.

Standard ops go through `tvm.relax.frontend.onnx` (its converters, unchanged). The kernel
ops that `lower-nm-kernels` leaves in the domain `com.sparsec.kernels` become
`R.call_dps_packed("sparsec_nm_matmul", ...)`: calls into sparsec's C kernels, which
`backends/tvm/kernel_objects.py` links into the model library (kernels/tvm_packed/sk_tvm_ffi.c).
Weights stay graph inputs (`keep_params_in_input`) so they ship as a parameter file, not
inside the library.
"""

from __future__ import annotations

import warnings
from typing import Any

import onnx

from sparsec.errors import UnsupportedError

KERNEL_DOMAIN = "com.sparsec.kernels"
NM_FUNC = "sparsec_nm_matmul"
NM_BIAS_FUNC = "sparsec_nm_matmul_bias"
BLOCK_FUNC = "sparsec_block_matmul"
KERNEL_OPS = ("NMSparseMatMul", "BlockSparseMatMul")


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


def _kernel_call(op_type: str, inputs: list[Any], attrs: dict[str, Any]) -> Any:
    from tvm import relax

    x = inputs[0]
    shape = list(x.ty.shape)
    cols = int(attrs["N"])
    out = relax.TensorType([*shape[:-1], cols], "float32")
    if op_type == "NMSparseMatMul":
        n, m = relax.prim_value(int(attrs["n"])), relax.prim_value(int(attrs["m"]))
        if int(attrs.get("has_bias", 0)):
            return relax.call_dps_packed(NM_BIAS_FUNC, relax.Tuple([x, inputs[1], inputs[2], inputs[3], n, m]), out)
        return relax.call_dps_packed(NM_FUNC, relax.Tuple([x, inputs[1], inputs[2], n, m]), out)
    if int(attrs.get("has_bias", 0)):
        y = relax.call_dps_packed(BLOCK_FUNC, relax.Tuple([x, *inputs[1:4], relax.prim_value(int(attrs["bk"]))]), out)
        return relax.op.add(y, inputs[4])
    return relax.call_dps_packed(BLOCK_FUNC, relax.Tuple([x, *inputs[1:4], relax.prim_value(int(attrs["bk"]))]), out)


def import_onnx(model: onnx.ModelProto) -> tuple[Any, list[tuple[str, Any]]]:
    """(Relax IRModule whose `main` takes the model inputs then the weights, [(weight name,
    numpy value)] in that order). Unsupported ops raise UnsupportedError naming them."""
    from tvm.relax.frontend.onnx import onnx_frontend as f

    problems = unsupported_ops(model)
    if problems:
        raise UnsupportedError(f"backend 'tvm' cannot import this model: {problems[0]}")

    class _Importer(f.ONNXGraphImporter):
        def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
            pass  # done above, with node names

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name in KERNEL_OPS:
                return self.bb.normalize(_kernel_call(op_name, list(inputs), attrs))
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
