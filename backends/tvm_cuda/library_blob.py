"""The imported-module blob of a TVM library (`__tvm_ffi__library_bin`), read and rewritten.

Why: this machine's TVM wheel has no CUDA runtime (libcuda is absent), so its CUDA codegen
returns a placeholder module (kind "cuda") that holds the generated CUDA C source with format
"cuda" instead of a compiled binary. Its serialized form is the one the CUDA runtime's loader
reads (format string, function table, code), so `compile_cuda_modules` compiles each such
source with nvcc to a fatbin (SASS for the arch plus PTX) and swaps it in: the exported
model.so then holds kernels ready for `cuModuleLoadData` on a CUDA machine and needs no
compiler there.

Blob layout (tvm_ffi, little endian): u64 byte count of the rest; the import tree as two u64
vectors (row pointers, child indices; each a u64 count then the values); then per module its
kind (u64 length + bytes) and, except for the host library "_lib", its serialized bytes
(u64 length + bytes). A CUDA module's bytes: format string, function-info map, code bytes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from sparsec.errors import UnsupportedError

HOST_LIB = "_lib"
FATBIN_MAGIC = 0xBA55ED50


@dataclass
class LibraryBlob:
    row_ptr: list[int]
    children: list[int]
    modules: list[tuple[str, bytes | None]]  # (kind, serialized bytes; None for "_lib")

    @classmethod
    def parse(cls, blob: bytes) -> LibraryBlob:
        r = _Reader(blob)
        total = r.u64()
        if total != len(blob) - 8:
            raise UnsupportedError(f"TVM library blob: size field {total} does not match {len(blob) - 8} bytes")
        row_ptr = r.u64_vector()
        children = r.u64_vector()
        modules: list[tuple[str, bytes | None]] = []
        for _ in range(len(row_ptr) - 1):
            kind = r.string()
            modules.append((kind, None if kind == HOST_LIB else r.bytes()))
        if r.pos != len(blob):
            raise UnsupportedError(f"TVM library blob: {len(blob) - r.pos} trailing bytes (unknown layout)")
        return cls(row_ptr, children, modules)

    def serialize(self) -> bytes:
        body = _u64_vector(self.row_ptr) + _u64_vector(self.children)
        for kind, data in self.modules:
            body += _bytes(kind.encode())
            if data is not None:
                body += _bytes(data)
        return struct.pack("<Q", len(body)) + body


@dataclass
class CudaModule:
    fmt: str
    fmap: bytes  # the function-info map, kept verbatim
    code: bytes

    @classmethod
    def parse(cls, data: bytes) -> CudaModule:
        r = _Reader(data)
        fmt = r.string()
        if fmt.startswith("cuda.module."):
            raise UnsupportedError(f"TVM CUDA module: versioned layout {fmt!r} is not handled (TVM newer than 0.27)")
        start = r.pos
        _skip_function_map(r)
        fmap = data[start:r.pos]
        code = r.bytes()
        if r.pos != len(data):
            raise UnsupportedError("TVM CUDA module: trailing bytes after the code (unknown layout)")
        return cls(fmt, fmap, code)

    def serialize(self) -> bytes:
        return _bytes(self.fmt.encode()) + self.fmap + _bytes(self.code)

    def kernel_names(self) -> list[str]:
        r = _Reader(self.fmap)
        return [name for name, _ in _function_map_names(r)]


def compile_cuda_modules(blob: bytes, compile_source: Callable[[str], bytes]) -> tuple[bytes, list[str]]:
    """The blob with every CUDA module in source form compiled (`compile_source(cuda_c) ->
    fatbin`), and the kernel names those modules hold."""
    lib = LibraryBlob.parse(blob)
    names: list[str] = []
    for i, (kind, data) in enumerate(lib.modules):
        if kind != "cuda" or data is None:
            continue
        mod = CudaModule.parse(data)
        if mod.fmt == "cuda":
            mod = CudaModule("fatbin", mod.fmap, compile_source(mod.code.decode()))
            lib.modules[i] = (kind, mod.serialize())
        names.extend(mod.kernel_names())
    return lib.serialize(), names


def blob_from_c(source: str) -> bytes:
    """The bytes of the `__tvm_ffi__library_bin` array in TVM's packed-imports C source."""
    body = source.split("__tvm_ffi__library_bin[", 2)[-1].split("{", 1)[1].split("}", 1)[0]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", body))


def blob_to_c(blob: bytes) -> str:
    """C source defining `__tvm_ffi__library_bin` (what TVM's ModulePackImportsToC writes)."""
    rows = ",\n".join("  " + ",".join(f"0x{b:02x}" for b in blob[i:i + 20]) for i in range(0, len(blob), 20))
    return (
        "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
        "__attribute__((visibility(\"default\"))) extern const unsigned char __tvm_ffi__library_bin[];\n"
        f"const unsigned char __tvm_ffi__library_bin[{len(blob)}] = {{\n{rows}\n}};\n"
        "#ifdef __cplusplus\n}\n#endif\n"
    )


def fatbins_in(data: bytes) -> list[bytes]:
    """Every CUDA fatbin embedded in `data` (a model.so): found by the fatbin header's magic;
    header: u32 magic, u16 version, u16 header size, u64 size of what follows the header."""
    found = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    pos = data.find(magic)
    while pos >= 0 and pos + 16 <= len(data):
        _, version, header, size = struct.unpack_from("<IHHQ", data, pos)
        end = pos + header + size
        if version == 1 and header == 16 and end <= len(data):
            found.append(data[pos:end])
            pos = data.find(magic, end)
        else:
            pos = data.find(magic, pos + 4)
    return found


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise UnsupportedError("TVM library blob: truncated")
        (v,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise UnsupportedError("TVM library blob: truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def bytes(self) -> bytes:
        return self.take(self.u64())

    def string(self) -> str:
        return self.bytes().decode()

    def u64_vector(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]


def _function_map_names(r: _Reader) -> list[tuple[str, None]]:
    """Walk a serialized Map<String, FunctionInfo>: per entry the key, then FunctionInfo's
    name, arg dtypes (count, 4 bytes each), launch-param tags (count, strings) and
    arg-extra tags (count, 4 bytes each)."""
    out = []
    for _ in range(r.u64()):
        key = r.string()
        r.string()
        r.take(4 * r.u64())
        for _ in range(r.u64()):
            r.string()
        r.take(4 * r.u64())
        out.append((key, None))
    return out


def _skip_function_map(r: _Reader) -> None:
    _function_map_names(r)


def _u64_vector(values: list[int]) -> bytes:
    return struct.pack(f"<Q{len(values)}Q", len(values), *values)


def _bytes(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data
