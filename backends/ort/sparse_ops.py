"""ONNX Runtime custom ops backed by sparsec.kernels (through onnxruntime-extensions PyOps).

Two ops in the PyOp domain (``ai.onnx.contrib``), each ``Y[..., N] = X[..., K] @ W``:

- ``NMSparseMatMul(X, values, meta)``, attrs ``n, m, K, N``: W packed by ``pack_nm``;
- ``BlockSparseMatMul(X, tile_ptr, kidx, values)``, attrs ``bk, K, N``: W packed by
  ``pack_block``.

The stored model is self-describing (the packed weights are initializers feeding the op).
``make_session`` is the loader: a PyOp receives its inputs as copies (~5 GB/s, 7 ms for a
32 MB weight), so it moves the packed weights into an in-process registry, validates them
once, and hands ONNX Runtime a graph whose sparse ops take only X plus a registry key.
It also installs an invocation hook that returns outputs as numpy arrays instead of the
library's ``tolist()`` (26 ms -> 0.05 ms for a 64 x 4096 output).
"""

from __future__ import annotations

import itertools
import threading
import weakref

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from sparsec.kernels import (
    PackedBlock,
    PackedNM,
    block_matmul,
    nm_matmul,
    pack_block,
    pack_nm,
)
from sparsec.kernels.matmul import pick_threads

PYOP_DOMAIN = "ai.onnx.contrib"
NM_OP = "NMSparseMatMul"
BLOCK_OP = "BlockSparseMatMul"
RUNTIME_OPS = (NM_OP, BLOCK_OP)
_KEY_ATTR = "weights"  # attribute added by make_session: key into _REGISTRY

_REGISTRY: dict[str, tuple[PackedNM | PackedBlock, int | None]] = {}
_KEYS = itertools.count()
_LOCK = threading.Lock()
_registered = False


def nm_matmul_node(
    x: str, y: str, weight: np.ndarray, n: int, m: int, name: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Node + initializers computing ``y = x @ weight`` for an n:m-sparse [K, N] weight
    (groups along K). Transpose Gemm's transB weights to [K, N] first."""
    packed = pack_nm(weight, n, m)
    inits = [
        numpy_helper.from_array(np.asarray(packed.values), f"{name}.values"),
        numpy_helper.from_array(np.asarray(packed.meta), f"{name}.meta"),
    ]
    node = helper.make_node(
        NM_OP, [x, inits[0].name, inits[1].name], [y], name=name, domain=PYOP_DOMAIN,
        n=n, m=m, K=packed.k, N=packed.cols,
    )
    return node, inits


def block_matmul_node(
    x: str, y: str, weight: np.ndarray, bk: int, name: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Node + initializers computing ``y = x @ weight`` for a block-sparse [K, N] weight."""
    packed = pack_block(weight, bk)
    arrays = {"tile_ptr": packed.tile_ptr, "kidx": packed.kidx, "values": packed.values}
    inits = [numpy_helper.from_array(np.asarray(a), f"{name}.{k}") for k, a in arrays.items()]
    node = helper.make_node(
        BLOCK_OP, [x, *(t.name for t in inits)], [y], name=name, domain=PYOP_DOMAIN,
        bk=bk, K=packed.k, N=packed.cols,
    )
    return node, inits


def register_ops() -> None:
    """Define the PyOps (idempotent; called by make_session)."""
    global _registered
    with _LOCK:
        if _registered:
            return
        from onnxruntime_extensions import PyCustomOpDef, onnx_op

        def run(x: np.ndarray, weights: str) -> np.ndarray:
            packed, limit = _REGISTRY[weights]
            rows = x.size // packed.k
            threads = pick_threads(rows * packed.values.size, limit)
            if isinstance(packed, PackedNM):
                return nm_matmul(x, packed, threads=threads)
            return block_matmul(x, packed, threads=threads)

        f, i, s = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_string
        # The attributes describe the weight for readers of the model; the kernel takes its
        # shape from the validated packed object.
        onnx_op(op_type=NM_OP, inputs=[f], outputs=[f],
                attrs={"n": i, "m": i, "K": i, "N": i, _KEY_ATTR: s})(
            lambda x, n, m, K, N, weights: run(x, weights))  # noqa: N803
        onnx_op(op_type=BLOCK_OP, inputs=[f], outputs=[f],
                attrs={"bk": i, "K": i, "N": i, _KEY_ATTR: s})(
            lambda x, bk, K, N, weights: run(x, weights))  # noqa: N803
        _install_array_hook()
        _registered = True


def _install_array_hook() -> None:
    """Return PyOp outputs as flat numpy arrays (the library's default hook calls tolist()).
    Same contract as onnxruntime_extensions._ocos._on_pyop_invocation, so other PyOps in
    the process keep working."""
    from onnxruntime_extensions import PyCustomOpDef
    from onnxruntime_extensions._ocos import Opdef

    def on_invocation(k_id: int, feed: tuple, attributes: dict) -> tuple:
        op = Opdef._odlist[k_id]
        rv = op.body(*feed, **op.cast_attributes(attributes))
        outs = rv if isinstance(rv, tuple) else (rv,)
        res: list = [k_id]
        for r in outs:
            r = np.ascontiguousarray(r)
            res += [r.shape, r.reshape(-1)]
        return tuple(res)

    PyCustomOpDef.install_hooker(on_invocation)


def _take_packed(node: onnx.NodeProto, inits: dict[str, np.ndarray]):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    arrays = [inits[name] for name in node.input[1:]]
    if node.op_type == NM_OP:
        return PackedNM.from_arrays(attrs["n"], attrs["m"], attrs["K"], attrs["N"], *arrays)
    return PackedBlock.from_arrays(attrs["bk"], attrs["K"], attrs["N"], *arrays)


def make_session(
    model: onnx.ModelProto | bytes,
    threads: int = 2,
    kernel_threads: int | None = None,
    providers: list[str] | None = None,
) -> ort.InferenceSession:
    """An InferenceSession running ``model``; its sparse ops call sparsec.kernels.

    ``threads`` sets ONNX Runtime's intra-op pool; ``kernel_threads`` (default: the same)
    caps the sparse kernels' (small products run on one thread). Packed weights are validated here (malformed data raises
    PackedFormatError) and live as long as the session.
    """
    register_ops()
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.ModelProto()
    if not isinstance(model, bytes):
        proto.CopyFrom(model)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    keys, consumed = [], set()
    for node in graph.node:
        if node.domain != PYOP_DOMAIN or node.op_type not in RUNTIME_OPS:
            continue
        arrays = {name: numpy_helper.to_array(inits[name]) for name in node.input[1:]}
        packed = _take_packed(node, arrays)
        key = f"{node.name or node.output[0]}#{next(_KEYS)}"
        _REGISTRY[key] = (packed, kernel_threads or threads or None)
        keys.append(key)
        consumed.update(node.input[1:])
        del node.input[1:]
        node.attribute.append(helper.make_attribute(_KEY_ATTR, key))
    still_used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name not in consumed or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(op.domain == PYOP_DOMAIN for op in proto.opset_import) and keys:
        proto.opset_import.append(helper.make_opsetid(PYOP_DOMAIN, 1))

    from onnxruntime_extensions import get_library_path

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Spinning ORT workers would steal the cores the sparse kernels' threads need next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(
        proto.SerializeToString(), opts, providers=providers or ["CPUExecutionProvider"]
    )
    for key in keys:  # the packed weights die with the session
        weakref.finalize(session, _REGISTRY.pop, key, None)
    return session
