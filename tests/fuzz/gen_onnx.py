"""Fuzz cases for the ONNX loader: damaged real model files.

Each case writes one model file (and maybe external data) into a fresh folder, from a real
model (an MLP and a CNN, optionally with external data) damaged at the byte level
(truncation, bit flips, overwritten or inserted bytes, a wrong magic, random bytes) or at the
protobuf level (versions, opsets, tensor types, dims and data, ops, attributes, names,
graph inputs and outputs, external-data locations that escape the folder or do not exist).
The file then goes through what `sparsec inspect` and `sparsec compile` do with it: load,
cost model, IR printer, and for a sample a pruning pass with verification and a compile.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto

from .fuzz_property import Outcome, check_api
from .gen_models import cnn_proto, mlp_proto

MAGICS = (b"PK\x03\x04", b"\x89HDF\r\n\x1a\n", b"\x80\x04\x95", b"\x93NUMPY", b"GGUF", b"pytorch", b"\x00" * 8, b"\xff" * 8)
OPS = ("Relu", "MatMul", "Gemm", "Conv", "Add", "Reshape", "Loop", "If", "Scan", "NoSuchOp", "", "Softmax",
       "Transpose", "Flatten", "Concat", "Gather", "LayerNormalization", "Identity", "Cast", "QLinearConv")
DOMAINS = ("", "ai.onnx", "com.microsoft", "com.sparsec", "com.sparsec.kernels", "evil.domain", "ai.onnx.ml")
LOCATIONS = ("weights.bin", "../outside.bin", "/etc/hostname", "sub/../../outside.bin", "", ".", "sub",
             "missing.bin", "weights.bin\x00x", "./weights.bin", "sub/../weights.bin", "~/weights.bin", "ünï.bin")
NAMES = ("", "x", "y", "w1", "h", "a\nb", "名前", "r", " ", "x" * 300)


def _base(rng: random.Random) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    proto.CopyFrom(mlp_proto() if rng.random() < 0.6 else cnn_proto())
    return proto


# -- protobuf-level damage ------------------------------------------------------------------
def _init(rng: random.Random, proto: onnx.ModelProto) -> TensorProto:
    return rng.choice(list(proto.graph.initializer))


def _m_versions(rng: random.Random, proto: onnx.ModelProto, folder: Path) -> None:
    if rng.random() < 0.5:
        proto.ir_version = rng.choice((0, -1, 1, 3, 7, 11, 12, 99, 2**62))
    elif not proto.opset_import:
        proto.opset_import.add().version = rng.choice((1, 17))
    else:
        op = rng.choice(list(proto.opset_import))
        op.version = rng.choice((0, -1, 1, 10, 11, 17, 23, 24, 99, 2**40))
        if rng.random() < 0.3:
            op.domain = rng.choice(DOMAINS)
        if rng.random() < 0.2:
            del proto.opset_import[:]


def _m_tensor(rng: random.Random, proto: onnx.ModelProto, folder: Path) -> None:
    t = _init(rng, proto)
    r = rng.random()
    if r < 0.25 and t.dims:
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice((0, -1, 1, t.dims[i] + 1, t.dims[i] * 2, 2**31, 2**62))
    elif r < 0.45:
        t.data_type = rng.choice((0, 2, 3, 6, 7, 8, 9, 10, 11, 13, 16, 17, 21, 23, 99, -1))
    elif r < 0.65:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]
    elif r < 0.75:
        t.raw_data = t.raw_data + bytes(rng.randrange(1, 64))
    elif r < 0.85:
        t.ClearField("raw_data")
    elif r < 0.92:
        t.name = rng.choice(NAMES)
    else:
        del t.dims[:]
        t.dims.extend(rng.choice(((), (0,), (1, 1, 1, 1, 1), (2**31, 2**31))))


def _m_node(rng: random.Random, proto: onnx.ModelProto, folder: Path) -> None:
    node = rng.choice(list(proto.graph.node))
    r = rng.random()
    if r < 0.25:
        node.op_type = rng.choice(OPS)
    elif r < 0.35:
        node.domain = rng.choice(DOMAINS)
    elif r < 0.55:
        if node.input and rng.random() < 0.5:
            node.input[rng.randrange(len(node.input))] = rng.choice(NAMES + ("undefined",))
        elif rng.random() < 0.5:
            node.input.append(rng.choice(NAMES))
        elif node.input:
            del node.input[-1]
    elif r < 0.65:
        if node.output:
            node.output[0] = rng.choice(NAMES)
    elif r < 0.85:
        if node.attribute:
            a = rng.choice(list(node.attribute))
            if a.type == onnx.AttributeProto.INT:
                a.i = rng.choice((-1, 0, 2, 5, 2**40))
            elif a.type == onnx.AttributeProto.INTS:
                del a.ints[rng.randrange(len(a.ints) + 1):]
                if rng.random() < 0.5:
                    a.ints.append(rng.choice((-1, 0, 1000, 2**40)))
            if rng.random() < 0.2:
                a.type = rng.choice((1, 2, 3, 4, 6, 7, 8))
        else:
            node.attribute.append(onnx.helper.make_attribute(rng.choice(("transB", "axis", "alpha", "junk")), rng.choice((3, -1, 0.5, "s", [1, 2]))))
    elif r < 0.93:
        del proto.graph.node[rng.randrange(len(proto.graph.node))]
    else:
        proto.graph.node.append(onnx.NodeProto())
        proto.graph.node[-1].CopyFrom(node)
        node.name = rng.choice(NAMES)


def _m_io(rng: random.Random, proto: onnx.ModelProto, folder: Path) -> None:
    g = proto.graph
    value = rng.choice(list(g.input) + list(g.output))
    r = rng.random()
    tt = value.type.tensor_type
    if r < 0.35 and tt.shape.dim:
        d = tt.shape.dim[rng.randrange(len(tt.shape.dim))]
        if rng.random() < 0.5:
            d.dim_value = rng.choice((0, -1, 3, 2**31, 2**62))
        else:
            d.dim_param = rng.choice(("N", "batch", "", "é", "a b"))
    elif r < 0.5:
        tt.elem_type = rng.choice((0, 2, 6, 7, 9, 10, 11, 16, 99))
    elif r < 0.6:
        tt.ClearField("shape") if rng.random() < 0.5 else tt.shape.dim.add().CopyFrom(tt.shape.dim[0]) if tt.shape.dim else None
    elif r < 0.7:
        value.type.ClearField("tensor_type")
    elif r < 0.8:
        value.name = rng.choice(NAMES + ("undefined",))
    elif r < 0.9:
        lst = g.input if rng.random() < 0.5 else g.output
        if len(lst):
            del lst[rng.randrange(len(lst))]
    else:
        g.input.append(onnx.helper.make_tensor_value_info(rng.choice(NAMES), rng.choice((1, 7)), rng.choice((None, [1], ["N", 3]))))


def _m_external(rng: random.Random, proto: onnx.ModelProto, folder: Path) -> None:
    """Move one or more initializers to external data, then maybe damage the reference."""
    data = bytearray()
    for t in proto.graph.initializer:
        if rng.random() < 0.6 and t.raw_data:
            offset = len(data)
            data += t.raw_data
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            entries = {"location": "weights.bin", "offset": str(offset), "length": str(len(t.raw_data) or len(data) - offset)}
            r = rng.random()
            if r < 0.35:
                entries["location"] = rng.choice(LOCATIONS)
            elif r < 0.5:
                entries[rng.choice(("offset", "length"))] = rng.choice(("-5", "abc", "", str(2**62), "1e3", "0", str(len(data) + 7)))
            elif r < 0.55:
                entries["checksum"] = "x"
            elif r < 0.6:
                del entries["location"]
            for k, v in entries.items():
                e = t.external_data.add()
                e.key, e.value = k, v
    if not data or (folder / "weights.bin").exists():
        return
    r = rng.random()
    if r < 0.8:
        (folder / "weights.bin").write_bytes(bytes(data) if r < 0.65 else bytes(data[: rng.randrange(len(data))]))
    elif r < 0.9:
        (folder / "weights.bin").mkdir()
    (folder / "sub").mkdir(exist_ok=True)
    # A file outside the model's folder that an escaping location would read.
    (folder.parent / "outside.bin").write_bytes(bytes(data))


STRUCTURAL: tuple[Callable[[random.Random, onnx.ModelProto, Path], None], ...] = (
    _m_versions, _m_tensor, _m_node, _m_io, _m_external,
)


# -- byte-level damage ----------------------------------------------------------------------
def _damage_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    r = rng.random()
    if r < 0.2:
        return bytes(b[: rng.randrange(len(b))])
    if r < 0.45:
        for _ in range(rng.choice((1, 1, 2, 4, 8, 32))):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if r < 0.6:
        i = rng.randrange(len(b))
        n = rng.randrange(1, 64)
        b[i : i + n] = rng.randbytes(n)
        return bytes(b)
    if r < 0.7:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randrange(1, 32))
        return bytes(b)
    if r < 0.8:
        i = rng.randrange(len(b))
        del b[i : i + rng.randrange(1, 64)]
        return bytes(b)
    if r < 0.9:
        return rng.choice(MAGICS) + bytes(b[rng.choice((0, 4, 8)):])
    return rng.randbytes(rng.choice((0, 1, 7, 100, 4096)))


def write_case(seed: int, folder: Path) -> Path:
    """Write case `seed` into `folder` (empty, with a writable parent); return the model path."""
    rng = random.Random(seed)
    proto = _base(rng)
    path = folder / rng.choice(("model.onnx", "m.onnx", "é model.onnx"))
    r = rng.random()
    if r < 0.55:
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            rng.choice(STRUCTURAL)(rng, proto, folder)
        data = proto.SerializeToString()
    elif r < 0.65:
        _m_external(rng, proto, folder)
        data = proto.SerializeToString()
    else:
        data = _damage_bytes(rng, proto.SerializeToString())
    path.write_bytes(data)
    return path


def use_model(path: Path, seed: int) -> None:
    """What the CLI does with a model file: load, cost model, print; for a sample, prune with
    verification, and compile (no latency measurement)."""
    from sparsec.compiler import CompileOptions, compile_model
    from sparsec.ir.io import load_model, model_bytes
    from sparsec.ir.printer import print_ir
    from sparsec.passes.analysis.cost_model import estimate_costs
    from sparsec.passes.sparsify.nm_sparsity import NMSparsity
    from sparsec.pm.context import PassContext
    from sparsec.pm.manager import PassManager

    model = load_model(path)
    estimate_costs(model)
    print_ir(model)
    if seed % 4 == 0:
        with tempfile.TemporaryDirectory() as tmp:
            PassManager([NMSparsity(min_params=0)]).run(model, PassContext(repro_dir=Path(tmp) / "r"))
        model_bytes(model)
    if seed % 16 == 1:
        compile_model(load_model(path), CompileOptions(bench=False, fidelity_samples=1))


def escaping_locations(path: Path) -> list[str]:
    """External-data locations of the file at `path` that lie outside its folder."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    folder = path.parent.resolve()
    found = []
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and e.value:
                target = (folder / e.value.replace("\x00", "")).resolve()
                if folder not in target.parents and target != folder:
                    found.append(e.value)
    return found


def onnx_case(seed: int) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "case"
        folder.mkdir()
        path = write_case(seed, folder)
        cwd = os.getcwd()
        os.chdir(folder)  # a relative location must not resolve against the working folder
        try:
            outcome = check_api(lambda: use_model(path, seed))
        finally:
            os.chdir(cwd)
        if outcome.kind == "success" and escaping_locations(path):
            return Outcome("fail", f"loaded external data outside the model's folder: {escaping_locations(path)}")
        return outcome
