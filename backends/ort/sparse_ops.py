"""ONNX Runtime custom ops backed by sparsec.kernels: a native custom-op library.

Two ops in the domain ``com.sparsec.kernels`` (opset 1), each ``Y[..., N] = X[..., K] @ W``:

- ``NMSparseMatMul(X, values, meta)``, attrs ``n, m, K, N``: W packed by ``pack_nm``;
- ``BlockSparseMatMul(X, tile_ptr, kidx, values)``, attrs ``bk, K, N``: W packed by
  ``pack_block``.

The stored model is self-describing: the packed weights are constant initializers feeding
the op. The ops live in the compiled kernel library itself (``kernels/src/sk_ort_ops.c``);
``make_session`` registers that library with ONNX Runtime, whose kernels then read and check
the packed weights once at session creation and call the C kernels directly on ORT's
buffers at run time (no Python, no copies on the call path).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from sparsec.kernels import KernelUnavailableError, PackedFormatError, pack_block, pack_nm
from sparsec.runtime import KERNEL_DOMAIN, add_initializers

NM_OP = "NMSparseMatMul"
BLOCK_OP = "BlockSparseMatMul"
RUNTIME_OPS = (NM_OP, BLOCK_OP)
# Session config entry read by the library: most threads one sparse-kernel call may use
# (0 = all cores); small products run on one thread regardless.
THREADS_CONFIG_KEY = "sparsec.kernel_threads"
_ERROR_MARK = "sparsec kernel op"
_TYPE_ERROR = re.compile(
    r"Type '?(?P<type>[^' ]+)'? of input parameter \((?P<input>[^)]*)\) of operator "
    rf"\((?P<op>{NM_OP}|{BLOCK_OP})\) in node \((?P<node>[^)]*)\) is invalid"
)


def nm_matmul_node(
    x: str, y: str, weight: np.ndarray, n: int, m: int, name: str, bias: np.ndarray | None = None
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Node + initializers computing ``y = x @ weight (+ bias)`` for an n:m-sparse [K, N]
    weight (groups along K). Transpose Gemm's transB weights to [K, N] first."""
    packed = pack_nm(weight, n, m)
    inits = [
        numpy_helper.from_array(np.asarray(packed.values), f"{name}.values"),
        numpy_helper.from_array(np.asarray(packed.meta), f"{name}.meta"),
    ]
    inits += _bias_inits(bias, name)
    node = helper.make_node(
        NM_OP, [x, *(t.name for t in inits)], [y], name=name, domain=KERNEL_DOMAIN,
        n=n, m=m, K=packed.k, N=packed.cols, **({"has_bias": 1} if bias is not None else {}),
    )
    return node, inits


def _bias_inits(bias: np.ndarray | None, name: str) -> list[onnx.TensorProto]:
    if bias is None:
        return []
    return [numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32).reshape(-1), f"{name}.bias")]


def block_matmul_node(
    x: str, y: str, weight: np.ndarray, bk: int, name: str, bias: np.ndarray | None = None
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Node + initializers computing ``y = x @ weight (+ bias)`` for a block-sparse [K, N] weight."""
    packed = pack_block(weight, bk)
    arrays = {"tile_ptr": packed.tile_ptr, "kidx": packed.kidx, "values": packed.values}
    inits = [numpy_helper.from_array(np.asarray(a), f"{name}.{k}") for k, a in arrays.items()]
    inits += _bias_inits(bias, name)
    node = helper.make_node(
        BLOCK_OP, [x, *(t.name for t in inits)], [y], name=name, domain=KERNEL_DOMAIN,
        bk=bk, K=packed.k, N=packed.cols, **({"has_bias": 1} if bias is not None else {}),
    )
    return node, inits


def library_path() -> str:
    """The compiled library holding the custom ops; KernelUnavailableError (one line) if it
    is missing or was built without them."""
    from sparsec.kernels._native import load

    lib = load()
    if not hasattr(lib, "RegisterCustomOps"):
        raise KernelUnavailableError(
            "the sparsec kernel library has no ONNX Runtime ops (stale build): re-run "
            "`pip install -e .`"
        )
    return lib._name


def session_options(
    threads: int = 2, kernel_threads: int | None = None, allow_spinning: bool = False, library: str | None = None
) -> ort.SessionOptions:
    """SessionOptions with the sparsec custom ops registered.

    ``threads`` sets ONNX Runtime's intra-op pool; ``kernel_threads`` (default: the same)
    caps the threads of one sparse-kernel call (0 = all cores). ``library`` is the op library
    to register (an artifact's own copy); default: the installed one.
    """
    path = library or library_path()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Off by default: spinning ORT workers can steal the cores the sparse kernels' threads need
    # next. The compile measures both and records the faster (manifest `runtime_settings`).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    # Read when the library is registered: set it first.
    cap = threads if kernel_threads is None else kernel_threads
    opts.add_session_config_entry(THREADS_CONFIG_KEY, str(int(cap)))
    opts.register_custom_ops_library(path)
    return opts


def make_session(
    model: onnx.ModelProto | bytes,
    threads: int = 2,
    kernel_threads: int | None = None,
    providers: list[str] | None = None,
    options: ort.SessionOptions | None = None,
    allow_spinning: bool = False,
    *,
    initializers: dict[str, np.ndarray] | None = None,
    library: str | None = None,
) -> ort.InferenceSession:
    """An InferenceSession running ``model``; its sparse ops call sparsec.kernels.

    ``initializers`` are weights handed over in memory (``sparsec.ir.session_model``).
    Malformed packed weights raise PackedFormatError here (the library checks them when
    ONNX Runtime creates the kernels), never a crash at run time.
    """
    # `options`: from session_options, extended by the caller
    opts = options or session_options(threads, kernel_threads, allow_spinning, library)
    keep = add_initializers(opts, initializers or {})
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        session = ort.InferenceSession(data, opts, providers=providers or ["CPUExecutionProvider"])
        session._sparsec_weights = keep  # ONNX Runtime reads these arrays in place
        return session
    except Exception as exc:  # ORT's pybind exception types are not importable by name
        msg = str(exc)
        typed = _TYPE_ERROR.search(msg)
        if typed:  # ORT's own check of an input's element type, before our kernel sees it
            raise PackedFormatError(
                f"{_ERROR_MARK} {typed['op']} (node '{typed['node']}'): input {typed['input']} has "
                f"type {typed['type']}, which the op does not take"
            ) from exc
        if _ERROR_MARK not in msg:
            raise
        msg = msg[msg.index(_ERROR_MARK):].splitlines()[0]
        if "kernel ISA" in msg:
            raise KernelUnavailableError(msg) from exc
        raise PackedFormatError(msg) from exc
