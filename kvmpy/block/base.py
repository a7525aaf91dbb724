"""What a device sees of a disk image, whatever its format."""

from __future__ import annotations

from typing import Protocol


class BlockImage(Protocol):
    """An open disk image: raw or qcow2 (see :mod:`kvmpy.block`)."""

    path: str
    read_only: bool

    @property
    def size(self) -> int:
        """Bytes the guest sees."""
        ...

    def readinto(self, offset: int, buffers: list[memoryview]) -> None: ...

    def writefrom(self, offset: int, buffers: list[memoryview]) -> None: ...

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
