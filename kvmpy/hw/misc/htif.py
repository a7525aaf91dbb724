"""HTIF, the Host-Target InterFace of Spike (QEMU's ``riscv.htif.uart``, hw/char/riscv_htif.c).

Two 64-bit words in guest RAM, found from the ELF's ``tohost`` and ``fromhost`` symbols, are
served by the VMM instead of memory (the accelerator makes them an MMIO hole).  A write to
``tohost`` is a request ``device << 56 | command << 48 | payload``:

* device 0, command 0, payload odd: the test finished; ``payload >> 1`` is the exit status
  (1 means pass, ``(code << 1) | 1`` fails with ``code``);
* device 1, command 1: write the character ``payload & 0xff`` to the console;
* device 1, command 0: read a character (not supported: no answer is given).

Once a request is taken, ``tohost`` reads 0 and ``fromhost`` holds the answer
(``device << 56 | command << 48 | 0x100 | char`` for console output), as in QEMU 7.2.
32-bit programs write ``tohost`` as two halves; the request is taken on the high half.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvmpy import log
from kvmpy.hw.core import SysBusDevice, state_from_dict
from kvmpy.qom import register_type

HTIF_DEV_SHIFT = 56
HTIF_CMD_SHIFT = 48
HTIF_DEV_SYSCALL = 0
HTIF_DEV_CONSOLE = 1
HTIF_CONSOLE_CMD_GETC = 0
HTIF_CONSOLE_CMD_PUTC = 1
_PAYLOAD_MASK = (1 << 48) - 1
_U32 = 0xFFFFFFFF


@dataclass
class HtifState:
    tohost: int = 0
    fromhost: int = 0


def _nothing(*_args: object) -> None:
    return None


@register_type("riscv.htif.uart", "sys-bus-device", description="RISC-V HTIF (Spike)")
class Htif(SysBusDevice):
    """``tohost_offset`` and ``fromhost_offset`` are the words' offsets in the window."""

    access_sizes = (4, 8)
    name = "riscv.htif.uart"

    state: HtifState

    def __init__(self, tohost_offset: int = 0, fromhost_offset: int | None = None,
                 region_size: int = 16, on_exit: Callable[[int], None] = _nothing,
                 putchar: Callable[[bytes], None] = _nothing) -> None:
        self.tohost_offset = tohost_offset
        self.fromhost_offset = fromhost_offset
        self.region_size = region_size
        self.on_exit = on_exit
        self.putchar = putchar
        self.state = HtifState()

    def set_state(self, state: dict[str, object]) -> None:
        from kvmpy.migration.errors import VmStateError

        new = state_from_dict(self.state, state, self.name)
        if not all(0 <= v < 1 << 64 for v in (new.tohost, new.fromhost)):
            raise VmStateError(f"vmstate: {self.name}: a register value is out of range")
        self.state = new

    def mmio_read(self, offset: int, size: int) -> int:
        s = self.state
        for base, value in ((self.tohost_offset, s.tohost), (self.fromhost_offset, s.fromhost)):
            if base is not None and base <= offset < base + 8:
                return int(value >> (8 * (offset - base))) & ((1 << (8 * size)) - 1)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        s = self.state
        if offset == self.tohost_offset:
            if size == 8:
                self._request(value)
            else:
                s.tohost = (s.tohost & ~_U32) | (value & _U32)
        elif offset == self.tohost_offset + 4 and size == 4:
            self._request((s.tohost & _U32) | (value & _U32) << 32)
        elif self.fromhost_offset is not None and offset == self.fromhost_offset:
            s.fromhost = value if size == 8 else (s.fromhost & ~_U32) | (value & _U32)
        elif self.fromhost_offset is not None and offset == self.fromhost_offset + 4:
            s.fromhost = (s.fromhost & _U32) | (value & _U32) << 32
        else:
            log.guest_error(f"htif: write to offset 0x{offset:x} outside tohost/fromhost")

    def _request(self, value: int) -> None:
        s = self.state
        device = value >> HTIF_DEV_SHIFT
        cmd = (value >> HTIF_CMD_SHIFT) & 0xFF
        payload = value & _PAYLOAD_MASK
        s.tohost = value
        if device == HTIF_DEV_SYSCALL and cmd == 0:
            if payload & 1:
                s.tohost = 0
                self.on_exit(payload >> 1)
                return
            log.unimp("htif: pk syscall proxy not supported")
        elif device == HTIF_DEV_CONSOLE and cmd == HTIF_CONSOLE_CMD_PUTC:
            self.putchar(bytes([payload & 0xFF]))
            s.fromhost = (value >> HTIF_CMD_SHIFT << HTIF_CMD_SHIFT) | 0x100 | (payload & 0xFF)
        elif device == HTIF_DEV_CONSOLE and cmd == HTIF_CONSOLE_CMD_GETC:
            s.tohost = 0
            return
        else:
            log.guest_error(f"htif: unknown device {device} or command {cmd}")
        s.tohost = 0

    def reset(self) -> None:
        self.state = HtifState()
