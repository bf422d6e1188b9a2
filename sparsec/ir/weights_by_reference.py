"""Parse an ONNX file whose weights are inline as if they were external data in the file itself.

Parsing a 435 MB BERT-base copies every weight's `raw_data` into protobuf's arena (0.2 s),
and every read of a weight from Python copies it again into a `bytes` object (upb has no
view of a bytes field: 0.2-0.5 s per pass over the weights, in fresh pages), while the arena
keeps a second copy of the model resident for the whole compile. Here the file's protobuf
wire format is walked (no copy) to find each large top-level initializer's `raw_data`; a
small message without those bytes is parsed, and each stripped tensor points at its bytes'
offset in the file as external data. The rest of sparsec reads it like any external-data
model: `FileTensor`s read on demand, checked against the file's size.

Only the plain layout the exporters write is handled (one `graph` field, each initializer's
`raw_data` once, no external data of its own); anything else returns None and the file is
parsed as a whole, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import onnx

# Initializers with fewer raw bytes stay inline (shapes, scalars, norm scales are read
# often and are cheap to copy).
MIN_BYTES = 4096

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_RAW_DATA = 1, 2, 9
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14


class _Unsupported(Exception):
    """A layout this reader leaves to the full parse."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _Unsupported
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the message in buf[start:end]: (number, wire type, field start, payload
    start, payload end); a varint's payload is empty, its value ends at the field's end."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            yield number, wire, field_start, pos, pos
            continue
        if wire == 1:
            size = 8
        elif wire == 5:
            size = 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
        else:  # groups: not in ONNX
            raise _Unsupported
        if pos + size > end:
            raise _Unsupported
        yield number, wire, field_start, pos, pos + size
        pos += size


def _raw_data_span(buf: memoryview, start: int, end: int) -> tuple[int, int, int] | None:
    """(raw_data field start, payload start, payload end) of the TensorProto in buf[start:end]
    when it is worth referencing (large, byte-sized type, sized right), else None."""
    span, data_type, dims = None, 0, []
    for number, wire, field_start, p0, p1 in _fields(buf, start, end):
        if number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None
        if number == _TENSOR_RAW_DATA:
            if span is not None or wire != 2:
                raise _Unsupported
            span = (field_start, p0, p1)
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            data_type, _ = _varint(buf, field_start + 1, p1)
        elif number == _TENSOR_DIMS:
            if wire == 0:
                dims.append(_varint(buf, field_start + 1, p1)[0])
            elif wire == 2:  # packed
                pos = p0
                while pos < p1:
                    d, pos = _varint(buf, pos, p1)
                    dims.append(d)
    if span is None or span[2] - span[1] < MIN_BYTES:
        return None
    try:
        bits = onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return None
    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or bits % 8:
        return None
    if any(d >= 1 << 62 for d in dims) or math.prod(dims) * bits // 8 != span[2] - span[1]:
        return None  # mis-sized: parsed inline, where the load names the mismatch
    return span


def parse_by_reference(buf: memoryview, location: str) -> onnx.ModelProto | None:
    """The ModelProto in `buf` (a whole .onnx file) with each large top-level initializer's
    bytes left in the file: `data_location` EXTERNAL, `location` the file, `offset` and
    `length` where its raw_data lies. None when nothing is worth it or the layout is not the
    plain one; the caller parses the whole file then."""
    try:
        return _parse(buf, location)
    except _Unsupported:
        return None


def _parse(buf: memoryview, location: str) -> onnx.ModelProto | None:
    end = len(buf)
    graphs = [f for f in _fields(buf, 0, end) if f[0] == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0][1] != 2:
        return None
    _, _, g_field, g0, g1 = graphs[0]
    pieces: list[bytes | memoryview] = []
    spans: list[tuple[int, int]] = []  # (offset, length) of each referenced initializer's bytes
    stripped: list[int] = []  # their indices among the initializers
    last = g0
    index = -1
    for number, wire, field_start, p0, p1 in _fields(buf, g0, g1):
        if number != _GRAPH_INITIALIZER or wire != 2:
            continue
        index += 1
        span = _raw_data_span(buf, p0, p1)
        if span is None:
            continue
        pieces.append(buf[last:field_start])
        tensor = bytes(buf[p0 : span[0]]) + bytes(buf[span[2] : p1])  # without raw_data: small
        pieces.append(_encode_varint((_GRAPH_INITIALIZER << 3) | 2) + _encode_varint(len(tensor)) + tensor)
        last = p1
        spans.append((span[1], span[2] - span[1]))
        stripped.append(index)
    if not stripped:
        return None
    pieces.append(buf[last:g1])
    graph = b"".join(pieces)
    message = b"".join([
        buf[:g_field], _encode_varint((_MODEL_GRAPH << 3) | 2), _encode_varint(len(graph)), graph, buf[g1:end],
    ])
    proto = onnx.ModelProto()
    proto.ParseFromString(message)
    for i, (offset, length) in zip(stripped, spans, strict=True):
        tensor = proto.graph.initializer[i]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return proto


__all__ = ["MIN_BYTES", "parse_by_reference"]
