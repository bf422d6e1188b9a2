"""Fuzz cases for the kernels' packed formats, in Python and in the ONNX Runtime ops.

A case packs a small random N:M or block-sparse weight, then damages the packed arrays
(values, meta, tile_ptr, kidx: lengths, dtypes, bit flips, out-of-range and unsorted
entries), the node's attributes (n, m, bk, K, N, has_bias) or the bias. Through Python,
`PackedNM/PackedBlock.from_arrays` must refuse it with a PackedFormatError or accept it,
and an accepted packing must multiply like its dense form. Through ONNX Runtime, creating
a session must fail with one line naming the node or succeed; a session that is created
must compute what the Python loader's dense form gives (the C and Python checks agree),
and never crash or read out of bounds (run the C side under ASan to see the latter).
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec import kernels as sk
from sparsec.kernels import PackedFormatError

from .fuzz_property import Outcome, check_api

KERNEL_DOMAIN = "com.sparsec.kernels"
NODE = "fuzz_node"
MAX_DENSE = 1 << 22  # accepted packings larger than this (huge K) are not multiplied


def _damage(rng: random.Random, arr: np.ndarray, kind: str) -> np.ndarray:
    a = np.array(arr, copy=True)
    r = rng.random()
    if r < 0.15 and a.size:
        return a[: rng.randrange(a.size)]
    if r < 0.25:
        return np.concatenate([a, a[: rng.randrange(1, 17)] if a.size else np.zeros(3, a.dtype)])
    if r < 0.35:
        return a.astype(rng.choice((np.float64, np.int32, np.uint16, np.int64, np.float16, np.uint8)))
    if a.size == 0:
        return a
    flat = a.reshape(-1)
    if kind == "meta" and a.dtype == np.uint16:
        for _ in range(rng.choice((1, 2, 8))):
            flat[rng.randrange(a.size)] ^= np.uint16(1 << rng.randrange(16))
        return a
    i = rng.randrange(a.size)
    if kind == "values":
        v = rng.choice((np.nan, np.inf, -np.inf, 1e38, 0.0))
    else:  # int32 index arrays
        top = int(np.nan_to_num(a.max(), posinf=0, neginf=0))
        v = rng.choice((-1, -(2**31), 2**31 - 1, top + 1, top + 16, 0, 3, top - 1))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat[i] = np.array(v).astype(a.dtype)
    return a


def _nm(rng: random.Random) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    m = rng.choice(sk.packing_nm.SUPPORTED_M)
    n = rng.randrange(1, m + 1)
    k, cols = m * rng.randrange(1, 5), rng.randrange(1, 40)
    w = sk.prune_nm(np.random.default_rng(rng.randrange(2**32)).standard_normal((k, cols)), n, m)
    p = sk.pack_nm(w, n, m)
    return {"n": n, "m": m, "K": k, "N": cols}, {"values": np.asarray(p.values), "meta": np.asarray(p.meta)}, w


def _block(rng: random.Random) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    bk = rng.choice(sk.packing_block.SUPPORTED_BK)
    k, cols = bk * rng.randrange(1, 5), rng.randrange(1, 40)
    w = sk.prune_block(np.random.default_rng(rng.randrange(2**32)).standard_normal((k, cols)), rng.choice((0.0, 0.3, 0.7, 1.0)), bk)
    p = sk.pack_block(w, bk)
    arrays = {"tile_ptr": np.asarray(p.tile_ptr), "kidx": np.asarray(p.kidx), "values": np.asarray(p.values)}
    return {"bk": bk, "K": k, "N": cols}, arrays, w


def make_case(seed: int) -> tuple[str, dict, dict[str, np.ndarray], np.ndarray | None]:
    """(kind, attributes, packed arrays incl. an optional 'bias', the intact weight)."""
    rng = random.Random(seed)
    kind = rng.choice(("nm", "block"))
    attrs, arrays, w = _nm(rng) if kind == "nm" else _block(rng)
    if rng.random() < 0.3:
        arrays["bias"] = np.random.default_rng(seed).standard_normal(attrs["N"]).astype(np.float32)
        attrs["has_bias"] = 1
    intact = rng.random() < 0.1
    for _ in range(0 if intact else rng.choice((1, 1, 2))):
        r = rng.random()
        if r < 0.65:
            name = rng.choice(sorted(arrays))
            arrays[name] = _damage(rng, arrays[name], "values" if name in ("values", "bias") else "meta" if name == "meta" else "index")
        elif r < 0.9:
            key = rng.choice(sorted(attrs))
            attrs[key] = rng.choice((-1, 0, 1, 2, 3, 5, 7, 16, 17, 32, attrs[key] + 1, attrs[key] - 1, attrs[key] * 2, 2**31, 2**40))
        elif r < 0.95:
            attrs["has_bias"] = rng.choice((0, 1, 2))
        else:
            attrs.pop(rng.choice(sorted(attrs)))
    return kind, attrs, arrays, w if intact else None


# -- Python loaders -------------------------------------------------------------------------
def python_packing(kind: str, attrs: dict, arrays: dict[str, np.ndarray]) -> sk.PackedNM | sk.PackedBlock:
    try:
        k, cols = int(attrs["K"]), int(attrs["N"])
        if kind == "nm":
            return sk.PackedNM.from_arrays(int(attrs["n"]), int(attrs["m"]), k, cols, arrays["values"], arrays["meta"])
        return sk.PackedBlock.from_arrays(int(attrs["bk"]), k, cols, arrays["tile_ptr"], arrays["kidx"], arrays["values"])
    except KeyError as e:
        raise PackedFormatError(f"missing attribute {e}") from None


def _python_use(kind: str, attrs: dict, arrays: dict[str, np.ndarray]) -> None:
    packed = python_packing(kind, attrs, arrays)
    if packed.k * packed.cols > MAX_DENSE:
        return  # accepted; too large to multiply here
    x = np.random.default_rng(0).standard_normal((3, packed.k)).astype(np.float32)
    y = sk.nm_matmul(x, packed) if kind == "nm" else sk.block_matmul(x, packed)
    _assert_close(y, x @ packed.to_dense())


def _assert_close(y: np.ndarray, ref: np.ndarray) -> None:
    finite = np.isfinite(ref)
    if not np.array_equal(np.isfinite(y), finite) or not np.allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4):
        raise AssertionError("kernel output differs from the dense form of the packing")


def python_case(seed: int) -> Outcome:
    kind, attrs, arrays, _ = make_case(seed)
    return check_api(lambda: _python_use(kind, attrs, arrays), clean=(PackedFormatError,))


# -- ONNX Runtime ops -----------------------------------------------------------------------
def ort_model(kind: str, attrs: dict, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    names = ["values", "meta"] if kind == "nm" else ["tile_ptr", "kidx", "values"]
    if "bias" in arrays:
        names.append("bias")
    inits = [numpy_helper.from_array(np.ascontiguousarray(arrays[n]), f"{NODE}.{n}") for n in names]
    op = "NMSparseMatMul" if kind == "nm" else "BlockSparseMatMul"
    node = helper.make_node(op, ["x", *(t.name for t in inits)], ["y"], name=NODE, domain=KERNEL_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(KERNEL_DOMAIN, 1)])


def _ort_use(kind: str, attrs: dict, arrays: dict[str, np.ndarray], w: np.ndarray | None) -> None:
    from sparsec.backends.ort.sparse_ops import make_session

    try:
        session = make_session(ort_model(kind, attrs, arrays), threads=1)
    except PackedFormatError as e:
        if f"node '{NODE}'" not in str(e):
            raise AssertionError(f"error does not name the node: {e}") from None
        raise
    # The session accepted the packing: so must the Python loader, with the same product.
    try:
        packed = python_packing(kind, attrs, arrays)
    except PackedFormatError as e:
        raise AssertionError(f"ONNX Runtime ran a packing that Python refuses ({e})") from None
    if packed.k * packed.cols > MAX_DENSE:
        return
    dense = packed.to_dense() if w is None else w
    x = np.random.default_rng(1).standard_normal((5, packed.k)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    bias = arrays.get("bias") if attrs.get("has_bias") else None
    _assert_close(y, x @ dense + (bias if bias is not None else 0))


def ort_case(seed: int) -> Outcome:
    kind, attrs, arrays, w = make_case(seed)
    return check_api(lambda: _ort_use(kind, attrs, arrays, w), clean=(PackedFormatError,))
