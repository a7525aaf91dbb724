"""Character devices: the backends (``-chardev``) and how options become open chardevs.

Importing the package registers every backend type (``-chardev help`` lists them).
"""

from kvmpy.chardev.base import (
    CHR_EVENT_BREAK,
    CHR_EVENT_CLOSED,
    CHR_EVENT_MUX_IN,
    CHR_EVENT_MUX_OUT,
    CHR_EVENT_OPENED,
    Chardev,
)
from kvmpy.chardev.file import FileChardev
from kvmpy.chardev.mux import MuxChardev, MuxFrontend
from kvmpy.chardev.null import NullChardev, VcChardev
from kvmpy.chardev.pty import PtyChardev
from kvmpy.chardev.ringbuf import MemoryChardev, RingbufChardev
from kvmpy.chardev.setup import (
    ChardevBuilder,
    MonitorSpec,
    VMChardevs,
    chardev_help,
    create_chardevs,
    open_backends,
)
from kvmpy.chardev.socket import SocketChardev
from kvmpy.chardev.stdio import StdioChardev, restore_terminals

__all__ = [
    "CHR_EVENT_BREAK",
    "CHR_EVENT_CLOSED",
    "CHR_EVENT_MUX_IN",
    "CHR_EVENT_MUX_OUT",
    "CHR_EVENT_OPENED",
    "Chardev",
    "ChardevBuilder",
    "FileChardev",
    "MemoryChardev",
    "MonitorSpec",
    "MuxChardev",
    "MuxFrontend",
    "NullChardev",
    "PtyChardev",
    "RingbufChardev",
    "SocketChardev",
    "StdioChardev",
    "VMChardevs",
    "VcChardev",
    "chardev_help",
    "create_chardevs",
    "open_backends",
    "restore_terminals",
]
