"""Loading and saving models with clear errors for every kind of bad file."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError, Message

from sparsec.errors import InputError, UnsupportedError
from sparsec.ir.file_tensor import adopt_external, initializers, raw_bytes
from sparsec.ir.weights_by_reference import parse_by_reference
from sparsec.ir.weights_file import WeightsFile

# Opsets of the default domain that the passes and ONNX Runtime backend understand.
MIN_OPSET = 11
MAX_OPSET = 23
# Domains whose ops we can reason about (ONNX, ORT contrib ops, our own dialect).
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.sparsec")


def load_model(path: str | os.PathLike, *, check_ops: bool = True, by_reference: bool = False) -> ir.Model:
    """Load an ONNX file (external data included) into the IR, or raise `InputError`.

    `by_reference`: large inline weights stay in the file and are read from it on demand,
    like external data (`sparsec.ir.weights_by_reference`): the compile's load. The model
    then needs its file for as long as it is used, and its proto (`to_proto`) refers to the
    file by name, as an external-data model's does."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    try:
        proto = _parse(p, by_reference)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InputError(f"{p}: not a valid ONNX model (cannot parse: {_short(e)})") from None
    _check_is_onnx(proto, str(p))
    model = _deserialize(proto, str(p), path=p)
    # External tensors are memory-mapped lazily, relative to the model's folder.
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    _check_external_data(model, p)
    adopt_external(model)  # read weights on demand, never keep a whole-file mapping
    if check_ops:
        check_supported(model, str(p))
    return model


def _parse(p: Path, by_reference: bool = False) -> onnx.ModelProto:
    """The file's ModelProto, external data not loaded. A binary file is parsed from a
    read-only mapping of it: the parse copies what it keeps, and the file's bytes are never
    copied into a buffer first (BERT-base, 435 MB, in fresh processes: 0.17-0.22 s against
    0.44-1.81 s through `onnx.load`)."""
    if onnx.serialization.registry.get_format_from_file_extension(p.suffix) not in (None, "protobuf"):
        return onnx.load(str(p), load_external_data=False)  # text formats (.onnxtxt, .textproto, ...)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        # Large inline weights stay in the file, read on demand like external data
        # (sparsec.ir.weights_by_reference); a layout it does not handle is parsed whole.
        proto = parse_by_reference(view, p.name) if by_reference else None
        if proto is None:
            proto = onnx.ModelProto()
            proto.ParseFromString(view)
    return proto


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
        with WeightsFile(data_path) as f:
            for value in model.graph.initializers.values():
                tensor = value.const_value
                if tensor is None or tensor.nbytes < 1024 or tensor.dtype.bitwidth < 8:
                    continue
                array = tensor.numpy()
                offset = f.append(raw_bytes(array.astype(array.dtype.newbyteorder("<"), copy=False)))
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


def model_hash(path: str | os.PathLike, external: Iterable[str | os.PathLike] = ()) -> str:
    """sha256 of the model file, then of each file in `external` (name and bytes): pass the
    external-data files the loaded model reads (`external_data_files`), so that an edit to
    the weights alone changes the hash too."""
    h = hashlib.sha256()
    for i, p in enumerate([Path(path), *sorted(Path(e) for e in external)]):
        if i:
            h.update(b"\0" + p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def external_data_files(model: ir.Model) -> list[Path]:
    """The files that the model's initializers (subgraphs included) keep their bytes in."""
    files = {Path(v.const_value.path) for v in initializers(model) if isinstance(v.const_value, ir.ExternalTensor)}
    return sorted(files)


def opset_version(model: ir.Model) -> int:
    for domain in ("", "ai.onnx"):
        if domain in model.opset_imports:
            return int(model.opset_imports[domain])
    return 0


def check_supported(model: ir.Model, origin: str, allow_domains: tuple[str, ...] = ()) -> None:
    """Refuse opsets and ops that the pipeline cannot handle, naming the first offender
    (`allow_domains`: domains a caller takes as they are)."""
    version = opset_version(model)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedError(
            f"{origin}: opset {version} is not supported (sparsec handles ONNX opsets "
            f"{MIN_OPSET}-{MAX_OPSET}; convert with onnx.version_converter)"
        )
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in allow_domains:
            continue
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


def _check_model(proto: onnx.ModelProto, origin: str, path: Path | None) -> None:
    # Attribute tensors keep their data in the light copy: one held outside the file is
    # resolved by the checker against the model's folder, so it is given the file.
    external_attr = path is not None and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(proto.graph, initializers=False)
    )
    try:
        onnx.checker.check_model(str(path) if external_attr else _without_weight_data(proto))
    except (onnx.checker.ValidationError, ValueError) as e:  # ValueError: undecodable text
        raise InputError(f"{origin}: not a valid ONNX model ({_short(e)})") from None


def _without_weight_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with each top-level initializer replaced by an empty tensor of its name and type.

    The checker serializes and parses its own copy of what it is given: on a 435 MB BERT-base
    that cost 0.45-2 s (fresh pages) and a second copy's memory, all to check weight bytes
    that `_check_tensor_data` and `_check_external_data` check without copying."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip="graph")
    _copy_fields(proto.graph, light.graph, skip="initializer")
    for tensor in proto.graph.initializer:
        stub = light.graph.initializer.add()
        stub.name, stub.data_type, stub.raw_data = tensor.name, tensor.data_type, b""
        stub.dims.append(0)
    return light


def _copy_fields(src: Message, dst: Message, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _deserialize(proto: onnx.ModelProto, origin: str, path: Path | None = None) -> ir.Model:
    # The checker refuses what the IR and ONNX Runtime would trip over later, deep inside a
    # pass: values used before they are defined, malformed attributes, unknown types (no
    # shape inference: that runs per pass). Weight data is checked here, against shape and
    # type; external data by `_check_external_data`, against the model's folder.
    _check_model(proto, origin, path)
    for tensor in _tensors(proto.graph):
        _check_tensor_data(tensor, origin)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir's errors for protos the checker lets through
        raise InputError(f"{origin}: not a valid ONNX model ({_short(e)})") from None


def _tensors(graph: onnx.GraphProto, initializers: bool = True) -> Iterator[onnx.TensorProto]:
    """Every tensor of `graph`: initializers (of the top-level graph unless told not to) and
    attribute tensors, subgraphs included."""
    if initializers:
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
