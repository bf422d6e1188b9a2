"""The SparseConv custom op (domain com.sparsec.kernels): node + initializers from a weight.

``SparseConv(X, perm, row_ptr, taps, values[, bias])`` computes
``act(conv2d(X, W, stride, pads) + bias)`` in NCHW fp32 with W packed by ``pack_conv``
(kernels/src/conv_ort_op.c). H and W are the input size the offsets are precomputed for.
"""

from __future__ import annotations

import numpy as np

from sparsec.kernels.packing_conv import PackedConv

CONV_OP = "SparseConv"
ACT_CODES = {"none": 0, "relu": 1, "relu6": 2}


def conv_attributes(packed: PackedConv, stride: int, pads: tuple[int, int, int, int], act: str,
                    has_bias: bool, h: int, w: int) -> dict[str, int]:
    return {
        "cout": packed.cout, "cin": packed.cin, "kh": packed.kh, "kw": packed.kw, "kc": packed.kc,
        "stride": int(stride), "pad_t": int(pads[0]), "pad_l": int(pads[1]), "pad_b": int(pads[2]),
        "pad_r": int(pads[3]), "act": ACT_CODES[act], "has_bias": int(has_bias), "H": int(h), "W": int(w),
    }


def packed_arrays(packed: PackedConv) -> dict[str, np.ndarray]:
    return {"perm": np.asarray(packed.perm), "row_ptr": np.asarray(packed.row_ptr),
            "taps": np.asarray(packed.taps), "values": np.asarray(packed.values)}


def sparse_conv_node(x: str, y: str, weight: np.ndarray, name: str, h: int, w: int, stride: int = 1,
                     pads: tuple[int, int, int, int] = (0, 0, 0, 0), bias: np.ndarray | None = None,
                     act: str = "none", kc: int | None = None):
    """(onnx NodeProto, initializers) for a SparseConv of ``weight`` [Cout, Cin, KH, KW]."""
    from onnx import helper, numpy_helper

    from sparsec.kernels.packing_conv import pack_conv
    from sparsec.runtime import KERNEL_DOMAIN

    packed = pack_conv(weight, kc)
    inits = [numpy_helper.from_array(a, f"{name}.{k}") for k, a in packed_arrays(packed).items()]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32).reshape(-1), f"{name}.bias"))
    node = helper.make_node(CONV_OP, [x, *(t.name for t in inits)], [y], name=name, domain=KERNEL_DOMAIN,
                            **conv_attributes(packed, stride, pads, act, bias is not None, h, w))
    return node, inits
