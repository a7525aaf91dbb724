"""``-chardev null``: output is discarded, there is never input.  Also ``vc``, the virtual
console QEMU gives the serial port when there is no ``-nographic``: kvmpy has no graphical
display, so a ``vc`` discards output the way QEMU's does under ``-display none``."""

from __future__ import annotations

from kvmpy.chardev.common import Backend
from kvmpy.qom import Property, register_type


@register_type("chardev-null", "chardev", description="discards output, no input")
class NullChardev(Backend):
    backend = "null"

    def open(self) -> None:
        self.open_logfile()

    def close(self) -> None:
        self.close_logfile()

    def write(self, data: bytes) -> int:
        self.log_output(data)
        return len(data)


@register_type("chardev-vc", "chardev", description="virtual console (no display: discarded)")
class VcChardev(NullChardev):
    backend = "vc"

    width = Property(int, 0, "console width in pixels")
    height = Property(int, 0, "console height in pixels")
    cols = Property(int, 0, "console width in characters")
    rows = Property(int, 0, "console height in characters")
