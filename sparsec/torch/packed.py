"""Dense weights back from the ORT backend's packed N:M kernel ops.

`lower-nm-kernels` replaces a MatMul/Gemm whose weight is N:M by `NMMatMul(x, values, meta
[, bias])` with the weight packed (`kernels/packing_nm.py`) and its original initializer gone.
Here each such op's weight is unpacked to the torch Linear layout [out, in] under its
original name (`<weight>.nm_values` -> `<weight>`), and a folded bias under
`<module>.bias`, so that names place them (the values are then checked like any other).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.kernels.packing_nm import TILE, decode_positions

VALUES_SUFFIX, META_SUFFIX, BIAS_SUFFIX = ".nm_values", ".nm_meta", ".nm_bias"


def unpack_nm(values: np.ndarray, meta: np.ndarray, n: int, m: int, k: int, cols: int) -> np.ndarray:
    """Inverse of `pack_nm`: the dense [K, C] weight (zeros where nothing was kept)."""
    tiles, groups = -(-cols // TILE), k // m
    pos = decode_positions(meta, n, m, tiles, groups).astype(np.int64)  # [tiles, groups, n, lane]
    vals = np.asarray(values, dtype=np.float32).reshape(tiles, groups, n, TILE)
    wg = np.zeros((tiles, groups, TILE, m), dtype=np.float32)
    np.put_along_axis(wg, pos.transpose(0, 1, 3, 2), vals.transpose(0, 1, 3, 2), axis=-1)
    return wg.transpose(1, 3, 0, 2).reshape(k, tiles * TILE)[:, :cols]


def unpacked_initializers(model: ir.Model) -> dict[str, np.ndarray]:
    """{original weight name: [out, in] array, '<module>.bias': bias} for every packed N:M op."""
    out: dict[str, np.ndarray] = {}
    for node in model.graph.all_nodes():
        if len(node.inputs) < 3 or node.inputs[1] is None or not (node.inputs[1].name or "").endswith(VALUES_SUFFIX):
            continue
        a = node.attributes
        if not all(key in a for key in ("n", "m", "K", "N")):
            continue
        values, meta = node.inputs[1].const_value, node.inputs[2].const_value
        if values is None or meta is None:
            continue
        w_kn = unpack_nm(values.numpy(), meta.numpy(), a["n"].as_int(), a["m"].as_int(), a["K"].as_int(), a["N"].as_int())
        name = node.inputs[1].name[: -len(VALUES_SUFFIX)]
        out[name] = np.ascontiguousarray(w_kn.T)  # torch Linear: [out, in]
        if len(node.inputs) > 3 and node.inputs[3] is not None and node.inputs[3].const_value is not None:
            owner = name.rpartition(".")[0]
            out[f"{owner}.bias" if owner else "bias"] = node.inputs[3].const_value.numpy().reshape(-1)
    return out
