"""The external-data file of an artifact, written past the page cache where the file system
allows it.

A compile writes hundreds of MB of weights that it never reads again. Through the page cache
each written page is a fresh page for the kernel to find, which on the 2-core VMs this is
built on costs more than the disk: BERT-base's 435 MB took 1.2-1.35 s written buffered and
0.26-0.31 s with O_DIRECT (`dd`, same file system). O_DIRECT needs page-aligned buffers,
lengths and file offsets, so bytes go through one aligned staging buffer, every tensor starts
at a page boundary (ONNX Runtime can then map it), and the file is cut to its real length at
the end. Where O_DIRECT is refused (tmpfs, some network file systems), the same bytes are
written buffered.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from pathlib import Path
from types import TracebackType

ALIGN = 4096
_STAGE = 8 << 20  # staging buffer: whole pages, few system calls


class WeightsFile:
    """`append(data) -> offset`: `data` at the next page boundary of the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.pos = 0  # logical end of the data
        self._fd = self._open_direct()
        self._buf = mmap.mmap(-1, _STAGE) if self._fd is not None else None
        self._fill = 0  # bytes staged in _buf, which starts at file offset pos - _fill
        self._flushed = False
        self._plain = None if self._fd is not None else open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def _open_direct(self) -> int | None:
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise

    def append(self, data: memoryview | bytes) -> int:
        self._write(bytes(-self.pos % ALIGN))
        offset = self.pos
        self._write(memoryview(data).cast("B"))
        return offset

    def _write(self, view: memoryview | bytes) -> None:
        view = memoryview(view)
        while len(view):
            if self._plain is not None:
                self._plain.write(view)
                self.pos += len(view)
                return
            assert self._buf is not None
            n = min(len(view), _STAGE - self._fill)
            self._buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            self.pos += n
            view = view[n:]
            if self._fill == _STAGE:
                self._flush(_STAGE)

    def _flush(self, length: int) -> None:
        assert self._fd is not None and self._buf is not None
        refused = False
        try:
            done = 0
            while done < length:
                done += os.write(self._fd, memoryview(self._buf)[done:length])
        except OSError as e:  # a file system that opens with O_DIRECT but refuses its writes
            if e.errno != errno.EINVAL or self._flushed:
                raise
            refused = True
        if refused:  # out of the handler: its traceback holds a view of the buffer
            self._to_plain()
            return
        self._flushed = True
        self._fill = 0

    def _to_plain(self) -> None:
        assert self._fd is not None and self._buf is not None
        os.close(self._fd)
        self._fd = None
        self._plain = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._plain.write(memoryview(self._buf)[: self._fill])
        self._buf.close()
        self._buf, self._fill = None, 0

    def close(self) -> None:
        try:
            if self._fd is not None and self._buf is not None and self._fill:
                tail = -(-self._fill // ALIGN) * ALIGN  # whole pages, zeros past the end ...
                self._buf[self._fill : tail] = bytes(tail - self._fill)
                self._flush(tail)
            if self._fd is not None:
                os.ftruncate(self._fd, self.pos)  # ... cut to the true length
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._buf is not None:
                with contextlib.suppress(BufferError):  # a failed write's traceback may hold a view
                    self._buf.close()
                self._buf = None
            if self._plain is not None:
                self._plain.close()
                self._plain = None

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ALIGN", "WeightsFile"]
