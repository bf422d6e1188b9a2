"""The candidate set: for each op kind, the ways the CPU target can run one layer.

A variant builds a small ONNX model holding `copies` independent layers of one shape, each
reading the same input (as many layers of that shape as the model has, up to a cap, so that
the weights touch the caches as they will in the model). The tuner times every applicable
variant of a layer's op kind against the kind's dense variant, in sessions set up as the
compiled model's. Register more with `register_variant` (e.g. sparse convolutions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DENSE = "dense"


@dataclass(frozen=True)
class LayerShape:
    """What one tuning measurement is about. `dims` depend on the op kind (matmul: K, N)."""

    op: str  # op kind: "matmul" (MatMul and Gemm layers)
    dims: tuple[int, ...]
    rows: int  # rows per call (tokens x batch for a MatMul)
    n: int
    m: int
    threads: int
    copies: int = 1

    @property
    def key(self) -> str:
        return (f"{self.op}:{'x'.join(map(str, self.dims))}:{self.n}:{self.m}:rows={self.rows}"
                f":threads={self.threads}:copies={self.copies}")

    @property
    def weight_params(self) -> int:
        return int(np.prod(self.dims))


@dataclass(frozen=True)
class Variant:
    op: str
    name: str
    build: Callable[[LayerShape, np.random.Generator], tuple[onnx.ModelProto, dict[str, np.ndarray]]]
    skip: Callable[[LayerShape], str | None] = lambda s: None  # why it cannot run this shape
    attrs: tuple[tuple[str, int], ...] = ()  # extra integer attributes of the lowered node
    # A restricted form of another variant (e.g. capped at one thread): chosen over that one
    # only when faster beyond the noise of their paired rounds, since a tie between the two
    # is decided by noise (the GPT-2 LM head, 19M multiply-adds, went to one thread on a
    # 6.07 vs 6.86 ms look at +-40% and then ran at half the streaming rate).
    restricts: str | None = None


_REGISTRY: dict[str, dict[str, Variant]] = {}


def register_variant(variant: Variant) -> Variant:
    table = _REGISTRY.setdefault(variant.op, {})
    if variant.name in table:
        raise ValueError(f"variant {variant.op}/{variant.name} is already registered")
    table[variant.name] = variant
    return variant


def variants_for(op: str) -> dict[str, Variant]:
    """Every variant of an op kind, the dense one included (empty when none is registered)."""
    return dict(_REGISTRY.get(op, {}))


def _matmul_model(shape: LayerShape, rng: np.random.Generator, node_for) -> tuple[onnx.ModelProto, dict]:
    k, cols = shape.dims
    nodes, inits, outputs = [], [], []
    for i in range(shape.copies):
        w = rng.standard_normal((k, cols), dtype=np.float32)  # no float64 temporary: LM heads are 150 MB
        node, tensors = node_for("x", f"y{i}", w, f"layer{i}")
        nodes.append(node)
        inits.extend(tensors)
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [shape.rows, cols]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.rows, k])
    graph = helper.make_graph(nodes, "tune", [x], outputs, inits)
    from sparsec.runtime import KERNEL_DOMAIN

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    return model, {"x": rng.standard_normal((shape.rows, k), dtype=np.float32)}


def _dense_node(x: str, y: str, w: np.ndarray, name: str):
    t = numpy_helper.from_array(w, f"{name}.w")
    return helper.make_node("MatMul", [x, t.name], [y], name=name), [t]


def _build_dense(shape: LayerShape, rng: np.random.Generator):
    return _matmul_model(shape, rng, _dense_node)


def _nm_kernel_builder(attrs: tuple[tuple[str, int], ...]):
    def build(shape: LayerShape, rng: np.random.Generator):
        from sparsec.backends.ort.sparse_ops import nm_matmul_node

        def node_for(x: str, y: str, w: np.ndarray, name: str):
            node, inits = nm_matmul_node(x, y, _nm_prune(w, shape.n, shape.m), shape.n, shape.m, name)
            node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs)
            return node, inits

        return _matmul_model(shape, rng, node_for)

    return build


def _nm_prune(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest of every m along K (axis 0), in place, a block of columns at a time
    (the argsort's int64 temporary would be twice the weight)."""
    k, cols = w.shape
    step = max(1, (1 << 22) // k)
    for c0 in range(0, cols, step):
        block = w[:, c0 : c0 + step]
        g = block.reshape(k // m, m, -1)
        order = np.argsort(np.abs(g), axis=1)
        np.put_along_axis(g, order[:, : m - n, :], 0.0, axis=1)
        block[...] = g.reshape(k, -1)
    return w


def _nm_kernel_skip(shape: LayerShape) -> str | None:
    from sparsec.kernels import kernels_available

    if not kernels_available():
        return "the sparsec kernel library is not built"
    if shape.m not in (4, 8, 16) or shape.dims[0] % shape.m:
        return f"kernels take m in (4, 8, 16) dividing K, not {shape.n}:{shape.m} with K={shape.dims[0]}"
    return None


def _one_thread_skip(shape: LayerShape) -> str | None:
    return _nm_kernel_skip(shape) or ("the model runs on one thread" if shape.threads <= 1 else None)


ONE_THREAD = (("max_threads", 1),)
register_variant(Variant("matmul", DENSE, _build_dense))
# The kernel with the session's threads (one per ~1M multiply-adds), and capped at one thread:
# waking the kernel pool's worker costs more than it saves on small layers or a busy machine.
register_variant(Variant("matmul", "nm-kernel", _nm_kernel_builder(()), _nm_kernel_skip))
register_variant(Variant("matmul", "nm-kernel-1t", _nm_kernel_builder(ONE_THREAD), _one_thread_skip, ONE_THREAD,
                         restricts="nm-kernel"))

# Conv layers (sparsec.tune.conv_variants registers into the table above).
from sparsec.tune import conv_variants  # noqa: E402, F401
