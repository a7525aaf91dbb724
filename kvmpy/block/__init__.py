"""Disk image formats behind ``-drive``: raw and qcow2 (versions 2 and 3).

Every image has the interface of :class:`RawImage`: ``path``, ``size`` (bytes the guest
sees), ``read_only``, ``readinto(offset, buffers)`` / ``writefrom(offset, buffers)`` (guest
RAM views), ``pread`` / ``pwrite``, ``flush`` and ``close``.  I/O errors are ``OSError``; a
device turns them into a guest-visible I/O error.  :func:`open_drive` opens a ``-drive``,
:func:`open_blockdev` a ``-blockdev`` node.

Importing the package imports none of its modules: the names below are imported from their
modules on first use (a VM without a disk never loads the image formats).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpy.block.base import BlockImage
    from kvmpy.block.blockdev import open_blockdev
    from kvmpy.block.drive import open_drive, open_image, probe
    from kvmpy.block.qcow2 import Qcow2Image
    from kvmpy.block.qcow2_header import create_image
    from kvmpy.block.raw import RawImage

_HOMES = {
    "BlockImage": "base", "open_blockdev": "blockdev", "open_drive": "drive",
    "open_image": "drive", "probe": "drive", "Qcow2Image": "qcow2",
    "create_image": "qcow2_header", "RawImage": "raw",
}

__all__ = ["BlockImage", "Qcow2Image", "RawImage", "create_image", "open_blockdev",
           "open_drive", "open_image", "probe"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
