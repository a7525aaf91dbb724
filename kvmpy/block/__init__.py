"""Disk image formats behind ``-drive``: raw and qcow2 (versions 2 and 3).

Every image has the interface of :class:`RawImage`: ``path``, ``size`` (bytes the guest
sees), ``read_only``, ``readinto(offset, buffers)`` / ``writefrom(offset, buffers)`` (guest
RAM views), ``pread`` / ``pwrite``, ``flush`` and ``close``.  I/O errors are ``OSError``; a
device turns them into a guest-visible I/O error.  :func:`open_drive` opens a ``-drive``,
:func:`open_blockdev` a ``-blockdev`` node.
"""

from kvmpy.block.base import BlockImage
from kvmpy.block.blockdev import open_blockdev
from kvmpy.block.drive import open_drive, open_image, probe
from kvmpy.block.qcow2 import Qcow2Image
from kvmpy.block.qcow2_header import create_image
from kvmpy.block.raw import RawImage

__all__ = ["BlockImage", "Qcow2Image", "RawImage", "create_image", "open_blockdev",
           "open_drive", "open_image", "probe"]
