"""Raw disk images: the file is the disk, byte for byte."""

from __future__ import annotations

import errno
import os
from typing import Any

from kvmpy.errors import ConfigError
from kvmpy.hostfile import NotAFileError, open_host_file


class RawImage:
    """A raw disk image file opened for the VM's lifetime.

    With ``snapshot`` (QEMU's ``-snapshot`` / ``snapshot=on``) the file is opened read-only
    and the guest's writes stay in memory, in 64 KiB chunks copied on first write, and are
    lost when the VM ends.  (A ``-drive`` with ``snapshot=on`` uses a temporary qcow2 overlay
    instead, as QEMU does: :func:`kvmpy.block.drive.open_snapshot`.)
    """

    CHUNK = 64 * 1024

    def __init__(self, path: str, read_only: bool = False, snapshot: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.overlay: dict[int, bytearray] | None = {} if snapshot else None
        try:
            host = open_host_file(path, os.O_RDONLY if read_only or snapshot else os.O_RDWR)
        except NotAFileError as exc:  # QEMU's words (block/file-posix.c); a FIFO hangs QEMU
            raise ConfigError(f"'file' driver requires '{path}' to be a regular file") from exc
        except OSError as exc:
            raise ConfigError(f"Could not open '{path}': {exc.strerror}") from exc
        self.fd, self.size = host.fd, host.size  # a device's size is lseek(SEEK_END)'s

    def _file_read(self, offset: int, buf: memoryview) -> None:
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], offset + done)
            if n <= 0:  # past the end of the file
                buf[done:] = bytes(len(buf) - done)
                return
            done += n

    def _file_write(self, offset: int, buf: memoryview) -> None:
        done = 0
        while done < len(buf):
            done += os.pwritev(self.fd, [buf[done:]], offset + done)

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """(chunk, offset in chunk, offset in buffer, length) covering the range."""
        pieces = []
        pos = 0
        while pos < length:
            chunk, inner = divmod(offset + pos, self.CHUNK)
            n = min(self.CHUNK - inner, length - pos)
            pieces.append((chunk, inner, pos, n))
            pos += n
        return pieces

    def _read_at(self, offset: int, buf: memoryview) -> None:
        if self.overlay is None:
            self._file_read(offset, buf)
            return
        for chunk, inner, pos, n in self._pieces(offset, len(buf)):
            data = self.overlay.get(chunk)
            if data is not None:
                buf[pos:pos + n] = data[inner:inner + n]
            else:
                self._file_read(chunk * self.CHUNK + inner, buf[pos:pos + n])

    def _write_at(self, offset: int, buf: memoryview) -> None:
        if self.overlay is None:
            self._file_write(offset, buf)
            return
        for chunk, inner, pos, n in self._pieces(offset, len(buf)):
            data = self.overlay.get(chunk)
            if data is None:
                data = bytearray(self.CHUNK)
                self._file_read(chunk * self.CHUNK, memoryview(data))
                self.overlay[chunk] = data
            data[inner:inner + n] = buf[pos:pos + n]

    def pread(self, offset: int, length: int) -> bytes:
        data = bytearray(length)
        self._read_at(offset, memoryview(data))
        return bytes(data)

    def pwrite(self, offset: int, data: bytes) -> None:
        self._write_at(offset, memoryview(data))

    def readinto(self, offset: int, buffers: list[memoryview]) -> None:
        """Fill ``buffers`` (guest RAM) from ``offset``; past the end of the file reads 0.
        Without an overlay a request is one ``preadv`` (per IOV_MAX buffers)."""
        if self.overlay is not None:
            for buf in buffers:
                self._read_at(offset, buf)
                offset += len(buf)
            return
        for batch in _batches(buffers):
            total = sum(map(len, batch))
            done = _vectored(os.preadv, self.fd, batch, offset, total)
            if done < total:  # past the end of the file: zeros
                for buf in _advance(batch, done):
                    buf[:] = bytes(len(buf))
            offset += total

    def writefrom(self, offset: int, buffers: list[memoryview]) -> None:
        """Write ``buffers`` (guest RAM) at ``offset``, one ``pwritev`` per IOV_MAX
        buffers without an overlay."""
        if self.overlay is not None:
            for buf in buffers:
                self._write_at(offset, buf)
                offset += len(buf)
            return
        for batch in _batches(buffers):
            total = sum(map(len, batch))
            if _vectored(os.pwritev, self.fd, batch, offset, total) < total:
                raise OSError(errno.EIO, "short write")
            offset += total

    def flush(self) -> None:
        if self.overlay is None:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


IOV_MAX = 1024


def _batches(buffers: list[memoryview]) -> list[list[memoryview]]:
    return [buffers[i:i + IOV_MAX] for i in range(0, len(buffers), IOV_MAX)] or [[]]


def _advance(buffers: list[memoryview], done: int) -> list[memoryview]:
    """What is left of ``buffers`` after the first ``done`` bytes."""
    rest = []
    for buf in buffers:
        if done >= len(buf):
            done -= len(buf)
            continue
        rest.append(buf[done:])
        done = 0
    return rest


def _vectored(call: Any, fd: int, buffers: list[memoryview], offset: int,
              total: int) -> int:
    """``preadv``/``pwritev`` of ``total`` bytes until everything is transferred or the
    file ends (a return of 0); returns the bytes transferred."""
    done = call(fd, buffers, offset) if total else 0
    while 0 < done < total:  # short (a signal, or the end of the file): go on from there
        n = call(fd, _advance(buffers, done), offset + done)
        if n <= 0:
            break
        done += n
    return max(done, 0)
