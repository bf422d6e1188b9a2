"""Weights that live in files until a pass reads them, and a spill file for rewritten weights.

onnx_ir's `ExternalTensor` memory-maps its whole data file on first use and keeps the
mapping: every page a pass or session touches stays resident for the rest of the compile,
so reading a 6 GB model once costs 6 GB of RSS. `FileTensor` reads its bytes with one
`pread` into a fresh array each time and keeps nothing (small tensors are cached), so a
weight costs memory only while someone holds its array.

`SpillStore` is where passes put the weights they rewrite: each array is written once to a
temporary file and replaced by a `FileTensor`, so the pruned copy of a big model lives on
disk, not in memory, until the artifact writer streams it out. When such a tensor is
dropped (a later pass replaced it), its bytes are punched out of the file, so a 26 GB model
pruned and then packed does not leave 26 GB of dead pruned weights on the disk.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import mmap
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

# Tensors at or below this many bytes are kept in memory once read (norm scales, shapes).
CACHE_BYTES = 1 << 20


class FileTensor(ir.ExternalTensor):
    """An external-data tensor read on demand with `pread`; never cached when large, and
    memory-mapped only where the input model fits the memory budget (`mapped_reads`)."""

    mappable = False  # a read-only input file (the model's own weights), not a spill file

    def _read(self) -> np.ndarray:
        self._check_validity()
        dtype = self.dtype
        if dtype.bitwidth < 8 or dtype.bitwidth % 8:  # packed sub-byte types: onnx_ir knows them
            return super().numpy()
        if self._array is not None:
            return self._array
        shape = self.shape.numpy()
        count = int(np.prod(shape)) if shape else 1
        np_dtype = np.dtype(dtype.numpy()).newbyteorder("<")
        mapping = _mapping(self.path) if self.mappable and _MAPPED is not None else None
        if mapping is not None and (self.offset or 0) + count * np_dtype.itemsize <= len(mapping):
            # A read-only view of the page cache: no copy and no fresh pages per read
            # (BERT-base read by pread: 0.75 s of a compile, each weight read 2-3 times).
            view = np.frombuffer(mapping, dtype=np_dtype, count=count, offset=self.offset or 0).reshape(shape)
            view.flags.writeable = False  # numpy marks a read-only mapping's view writable: a write would crash
            return view
        with open(self.path, "rb") as f:
            data = np.fromfile(f, dtype=np_dtype, count=count, offset=self.offset or 0)
        if data.size != count:
            raise OSError(f"external data of tensor '{self.name}' in {self.path} is truncated")
        array = data.reshape(shape)
        if array.nbytes <= CACHE_BYTES:
            self._array = array
        return array

    def numpy(self) -> np.ndarray:
        return self._read()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self._read()
        return array if dtype is None else array.astype(dtype)

    def tobytes(self) -> bytes:
        return self._read().tobytes()

    def release(self) -> None:
        self._array = None


def raw_bytes(array: np.ndarray) -> memoryview:
    """The C-order bytes of `array` (what `tobytes(order="C")` returns) as a view of its buffer:
    no copy of a contiguous array (a weight written to a file is not duplicated first)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return memoryview(flat.view(np.uint8)) if flat.dtype != object else memoryview(flat.tobytes())


def as_file_tensor(tensor: ir.ExternalTensor) -> FileTensor:
    """The input model's external tensor as a `FileTensor` (mappable: its file is not written
    by the compile; the artifact replaces files by renaming, so a mapping keeps its bytes)."""
    file_tensor = FileTensor(
        tensor.location, offset=tensor.offset, length=tensor.length, dtype=tensor.dtype,
        shape=tensor.shape, name=tensor.name, base_dir=tensor.base_dir,
    )
    file_tensor.mappable = True
    return file_tensor


# path -> read-only mapping of it, within `mapped_reads(True)`; None while reads are preads.
_MAPPED: dict[str, mmap.mmap] | None = None


class mapped_reads:  # noqa: N801 - used as a context manager, like `spilling`
    """Within the block (when `enabled`), input weights are read as views of a memory mapping
    of their file instead of copies. For models that fit the memory budget: a mapping keeps
    every page it touched resident while referenced, which a streaming compile cannot afford.
    Leaving the block drops the mappings; each closes when no array views it any more."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        global _MAPPED
        self._outer = _MAPPED
        _MAPPED = {} if self.enabled else None

    def __exit__(self, *exc: object) -> None:
        global _MAPPED
        _MAPPED = self._outer


def _mapping(path: str) -> mmap.mmap | None:
    assert _MAPPED is not None
    if path not in _MAPPED:
        try:
            with open(path, "rb") as f:
                # Private (copy-on-write) pages, shared with the page cache until written: a
                # write through a torch tensor made from a view (numpy's flag cannot stop it)
                # then changes a copy, where a read-only mapping would crash the process.
                _MAPPED[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):  # empty or unmappable: read with pread
            return None
    return _MAPPED[path]


def adopt_external(model: ir.Model) -> int:
    """Replace the model's memory-mapped external tensors by `FileTensor`s; returns how many."""
    count = 0
    for value in initializers(model):
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not isinstance(tensor, FileTensor):
            value.const_value = as_file_tensor(tensor)
            count += 1
    return count


def initializers(model: ir.Model) -> list[ir.Value]:
    """The initializers of the main graph and of every subgraph."""
    values = list(model.graph.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                values.extend(attr.value.initializers.values())
    return values


def weight_bytes(model: ir.Model) -> int:
    """Bytes of every initializer of the main graph (what a whole-model session holds)."""
    total = 0
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is not None:
            total += t.nbytes
    return total


class SpillStore:
    """An append-only temporary file of rewritten weights (removed by `close`)."""

    def __init__(self, directory: str | os.PathLike | None = None, *, threshold: int = 16 << 20) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="sparsec-spill-", dir=directory))
        atexit.register(shutil.rmtree, self.folder, True)  # also on SIGTERM (the CLI turns it into an exit)
        self.threshold = threshold
        self.path = self.folder / "weights.bin"
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.bytes = 0

    def put(self, array: np.ndarray, name: str | None = None) -> ir.TensorProtocol:
        """The tensor to store for `array`: a `FileTensor` in the spill file when large."""
        array = np.ascontiguousarray(array)
        if array.nbytes < self.threshold or array.dtype == object:
            return ir.tensor(array, name=name)
        offset = self._file.tell()
        self._file.write(raw_bytes(array.astype(array.dtype.newbyteorder("<"), copy=False)))
        self._file.flush()
        self.bytes += array.nbytes
        tensor = FileTensor(
            self.path.name, offset=offset, length=array.nbytes, dtype=ir.DataType.from_numpy(array.dtype),
            shape=ir.Shape(array.shape), name=name or "", base_dir=str(self.folder),
        )
        weakref.finalize(tensor, _punch_hole, str(self.path), offset, array.nbytes)
        return tensor

    def close(self) -> None:
        self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if os.name == "posix" else None


def _punch_hole(path: str, offset: int, length: int) -> None:
    """Free the disk blocks of a dropped spilled tensor (Linux; elsewhere the bytes stay until close).
    Exactly [offset, offset + length) is zeroed, so neighbours sharing a block are untouched."""
    fallocate = getattr(_LIBC, "fallocate", None)
    if fallocate is None or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return
    try:
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)  # best effort: errors ignored
    finally:
        os.close(fd)


_ACTIVE: list[SpillStore] = []


class spilling:  # noqa: N801 - used as a context manager, like contextlib helpers
    """Within the block, `store_tensor` writes large rewritten weights to a spill file."""

    def __init__(self, store: SpillStore | None) -> None:
        self.store = store

    def __enter__(self) -> SpillStore | None:
        if self.store is not None:
            _ACTIVE.append(self.store)
        return self.store

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            _ACTIVE.remove(self.store)


def spilling_active() -> bool:
    """Whether rewritten weights currently go to a spill file (the model is big enough that
    keeping an extra reference to its old weights would cost memory or disk)."""
    return bool(_ACTIVE)


def store_tensor(array: np.ndarray, name: str | None = None) -> ir.TensorProtocol:
    """The tensor a pass stores for a rewritten weight: spilled to disk when a store is active."""
    if _ACTIVE:
        return _ACTIVE[-1].put(array, name)
    return ir.tensor(array, name=name)


__all__ = ["FileTensor", "SpillStore", "adopt_external", "raw_bytes", "as_file_tensor", "spilling", "spilling_active", "store_tensor", "weight_bytes"]
