"""Loading and saving models with clear errors for every kind of bad file."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from sparsec.errors import InputError, UnsupportedError
from sparsec.ir.file_tensor import adopt_external, raw_bytes

# Opsets of the default domain that the passes and ONNX Runtime backend understand.
MIN_OPSET = 11
MAX_OPSET = 23
# Domains whose ops we can reason about (ONNX, ORT contrib ops, our own dialect).
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.sparsec")


def load_model(path: str | os.PathLike, *, check_ops: bool = True) -> ir.Model:
    """Load an ONNX file (external data included) into the IR, or raise `InputError`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    checked = False
    if p.stat().st_size > CHECK_FIRST_BYTES:
        # The checker parses its own copy of the file: run it before ours exists (a 0.65 GB
        # GPT-2 export peaked at 1.95 GB with both alive, 1.26 GB one after the other). A
        # model it refuses is loaded below as any other, for the usual precise message.
        try:
            onnx.checker.check_model(str(p))
            checked = True
        except Exception:  # noqa: BLE001 - reported below, with the file's own diagnosis
            checked = False
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InputError(f"{p}: not a valid ONNX model (cannot parse: {_short(e)})") from None
    _check_is_onnx(proto, str(p))
    model = _deserialize(proto, str(p), path=p, checked=checked)
    # External tensors are memory-mapped lazily, relative to the model's folder.
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    _check_external_data(model, p)
    adopt_external(model)  # read weights on demand, never keep a whole-file mapping
    if check_ops:
        check_supported(model, str(p))
    return model


def model_from_proto(proto: onnx.ModelProto, *, origin: str = "<model>") -> ir.Model:
    _check_is_onnx(proto, origin)
    model = _deserialize(proto, origin)
    check_supported(model, origin)
    return model


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def inline_copy(model: ir.Model) -> ir.Model:
    """A structural copy whose external-data weights are loaded into memory.

    The copy shares in-memory tensors with `model`, so it is cheap; rewriting the copy
    (for example lowering it to reference ONNX) leaves `model` alone.
    """
    copy = model.clone()
    ir.external_data.load_to_model(copy)
    return copy


def model_bytes(model: ir.Model) -> bytes:
    """Serialized model with every weight inside (deterministic for identical IR)."""
    return to_proto(inline_copy(model)).SerializeToString(deterministic=True)


def save_model(model: ir.Model, path: str | os.PathLike) -> None:
    """Save with all weights inside the file (deterministic bytes for identical IR)."""
    Path(path).write_bytes(model_bytes(model))


# Models with more weight bytes than this are written with an external-data file: protobuf
# cannot hold more than 2 GB, and a whole serialized copy would double the memory.
EXTERNAL_DATA_BYTES = 256 << 20


def write_model(model: ir.Model, path: str | os.PathLike, *, external: bool | None = None) -> list[Path]:
    """Write `model` to `path`; large weights go, streamed one tensor at a time, to
    `<name>.data` next to it (when `external`, or by default above EXTERNAL_DATA_BYTES).
    Returns the files written. Deterministic for identical IR."""
    from sparsec.ir.file_tensor import weight_bytes

    path = Path(path)
    if external is None:
        external = weight_bytes(model) > EXTERNAL_DATA_BYTES
    if not external:
        path.write_bytes(model_bytes(model))
        return [path]
    data_path = path.with_name(path.name + ".data")
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        with open(data_path, "wb") as f:
            for value in model.graph.initializers.values():
                tensor = value.const_value
                if tensor is None or tensor.nbytes < 1024 or tensor.dtype.bitwidth < 8:
                    continue
                offset = f.tell()
                array = tensor.numpy()
                f.write(raw_bytes(array.astype(array.dtype.newbyteorder("<"), copy=False)))
                del array
                swapped.append((value, tensor))
                value.const_value = ir.ExternalTensor(
                    data_path.name, offset, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=value.name,
                    base_dir=str(path.parent),
                )
        proto = to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    path.write_bytes(proto.SerializeToString(deterministic=True))
    return [path, data_path]


def model_hash(path: str | os.PathLike) -> str:
    """sha256 of the model file and of any external-data files next to it."""
    h = hashlib.sha256()
    p = Path(path)
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def opset_version(model: ir.Model) -> int:
    for domain in ("", "ai.onnx"):
        if domain in model.opset_imports:
            return int(model.opset_imports[domain])
    return 0


def check_supported(model: ir.Model, origin: str) -> None:
    """Refuse opsets and ops that the pipeline cannot handle, naming the first offender."""
    version = opset_version(model)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedError(
            f"{origin}: opset {version} is not supported (sparsec handles ONNX opsets "
            f"{MIN_OPSET}-{MAX_OPSET}; convert with onnx.version_converter)"
        )
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in KNOWN_DOMAINS:
            if node.domain in model.opset_imports and any(
                f.domain == node.domain and f.name == node.op_type for f in model.functions.values()
            ):
                continue
            raise UnsupportedError(
                f"{origin}: op '{node.op_type}' of domain '{node.domain}' (node '{node.name}') "
                "is not supported"
            )
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type, ""):
            raise UnsupportedError(
                f"{origin}: '{node.op_type}' (node '{node.name}') is not an ONNX operator"
            )


def _check_is_onnx(proto: onnx.ModelProto, origin: str) -> None:
    # Protobuf parses many random byte strings without error; an ONNX model has an IR
    # version, an opset import and a graph.
    if proto.ir_version <= 0 or not proto.HasField("graph") or len(proto.opset_import) == 0:
        raise InputError(f"{origin}: not an ONNX model (no IR version, opset import or graph)")
    if len(proto.graph.node) == 0:
        raise InputError(f"{origin}: ONNX model has an empty graph")


CHECK_FIRST_BYTES = 64 << 20


def _check_model(model: str | onnx.ModelProto, origin: str) -> None:
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:  # ValueError: undecodable text
        raise InputError(f"{origin}: not a valid ONNX model ({_short(e)})") from None


def _deserialize(proto: onnx.ModelProto, origin: str, path: Path | None = None, checked: bool = False) -> ir.Model:
    # The checker refuses what the IR and ONNX Runtime would trip over later, deep inside a
    # pass: tensors whose data does not fit their shape and type, values used before they
    # are defined, malformed attributes (no shape inference: that runs per pass). Given the
    # file, it resolves external data against the model's folder (given a proto, against
    # the working folder).
    if not checked:
        _check_model(str(path) if path is not None else proto, origin)
    for tensor in _tensors(proto.graph):
        _check_tensor_data(tensor, origin)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir's errors for protos the checker lets through
        raise InputError(f"{origin}: not a valid ONNX model ({_short(e)})") from None


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of `graph`: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] if attr.HasField("g") else []:
                yield from _tensors(sub)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _check_tensor_data(tensor: onnx.TensorProto, origin: str) -> None:
    """The checker only refuses data too short for the shape; the IR also trips on too long."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    if tensor.HasField("raw_data"):
        try:
            bits = ir.DataType(tensor.data_type).bitwidth
        except (TypeError, ValueError):
            raise InputError(
                f"{origin}: tensor '{tensor.name}' of type {tensor.data_type} cannot hold raw data"
            ) from None
        needed = -(-math.prod(tensor.dims) * bits // 8)
        if len(tensor.raw_data) != needed:
            raise InputError(
                f"{origin}: tensor '{tensor.name}' holds {len(tensor.raw_data)} bytes of data, "
                f"its shape {list(tensor.dims)} and type need {needed}"
            )
        return
    try:  # data in typed fields: rare and small, so converting it is cheap
        onnx.numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as e:
        raise InputError(f"{origin}: tensor '{tensor.name}' does not fit its shape ({_short(e)})") from None


def _check_external_data(model: ir.Model, path: Path) -> None:
    for init in model.graph.initializers.values():
        tensor = init.const_value
        if isinstance(tensor, ir.ExternalTensor):
            if "\x00" in tensor.location:
                raise InputError(f"{path}: external data location {tensor.location!r} holds a NUL byte")
            location = Path(tensor.base_dir) / tensor.location
            folder = path.parent.resolve()
            if folder not in location.resolve().parents:  # '../x', '/etc/x': not the model's data
                raise InputError(f"{path}: external data file '{tensor.location}' lies outside the model's folder")
            if not location.exists():
                raise InputError(f"{path}: external data file '{tensor.location}' is missing")
            if tensor.length is not None and tensor.length != tensor.nbytes:
                raise InputError(
                    f"{path}: external data of tensor '{init.name}' is {tensor.length} bytes long, "
                    f"its shape and type need {tensor.nbytes}"
                )
            needed = (tensor.offset or 0) + tensor.nbytes
            if location.stat().st_size < needed:
                raise InputError(
                    f"{path}: external data file '{tensor.location}' is truncated "
                    f"({location.stat().st_size} bytes, tensor '{init.name}' needs {needed})"
                )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__
