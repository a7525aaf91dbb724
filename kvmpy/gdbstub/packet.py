"""GDB remote serial protocol framing (gdb manual, "Overview" of Remote Protocol), as QEMU 7.2's
``gdb_read_byte``: ``$payload#xx`` with a two-digit checksum, ``}`` escapes (byte ^ 0x20),
``*`` run-length encoding, acknowledgements ``+``/``-`` until ``QStartNoAckMode``, and a lone
0x03 byte (Ctrl-C) between packets.

:class:`PacketReader` is a pure state machine: bytes in, events out, so malformed input can
only ever produce events, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PACKET_SIZE = 0x4000
"""The largest payload kvmpy accepts and announces in ``qSupported`` (bytes)."""


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C (0x03) outside a packet."""


@dataclass(frozen=True)
class BadChecksum:
    """A packet whose checksum does not match: answered with ``-`` (before no-ack mode)."""


@dataclass(frozen=True)
class Overrun:
    """A packet longer than :data:`PACKET_SIZE`: dropped, as QEMU drops it."""


@dataclass(frozen=True)
class Nak:
    """The client asked for the last packet again (``-``)."""


Event = Packet | Interrupt | BadChecksum | Overrun | Nak

_IDLE, _LINE, _LINE_ESC, _LINE_RLE, _SUM1, _SUM2 = range(6)


class PacketReader:
    """Splits the byte stream from gdb into :data:`Event` values."""

    def __init__(self, limit: int = PACKET_SIZE) -> None:
        self.limit = limit
        self._state = _IDLE
        self._line = bytearray()
        self._sum = 0
        self._sum_text = bytearray()
        self._overrun = False

    def feed(self, data: bytes) -> Iterator[Event]:
        for byte in data:
            event = self._byte(byte)
            if event is not None:
                yield event

    def _byte(self, c: int) -> Event | None:
        state = self._state
        if state == _IDLE:
            if c == 0x24:  # '$'
                self._line.clear()
                self._sum = 0
                self._overrun = False
                self._state = _LINE
            elif c == 0x03:
                return Interrupt()
            elif c == 0x2D:  # '-'
                return Nak()
            return None  # '+' and noise between packets
        if state in (_LINE, _LINE_ESC, _LINE_RLE):
            if c == 0x23 and state == _LINE:  # '#'
                self._sum_text.clear()
                self._state = _SUM1
                return None
            self._sum = (self._sum + c) & 0xFF
            if state == _LINE_ESC:
                self._append(c ^ 0x20)
                self._state = _LINE
            elif state == _LINE_RLE:
                repeat = c - 29  # ' ' + 3 repeats three more: the count is c - 29
                if not self._line or repeat < 1:
                    self._overrun = True  # malformed: drop the packet
                else:
                    for _ in range(repeat):
                        self._append(self._line[-1])
                self._state = _LINE
            elif c == 0x7D:  # '}'
                self._state = _LINE_ESC
            elif c == 0x2A:  # '*'
                self._state = _LINE_RLE
            else:
                self._append(c)
            return None
        self._sum_text.append(c)
        if state == _SUM1:
            self._state = _SUM2
            return None
        self._state = _IDLE
        if self._overrun:
            return Overrun()
        try:
            expected = int(self._sum_text.decode("ascii"), 16)
        except (UnicodeDecodeError, ValueError):
            return BadChecksum()
        if expected != self._sum:
            return BadChecksum()
        return Packet(bytes(self._line))

    def _append(self, c: int) -> None:
        if len(self._line) >= self.limit:
            self._overrun = True
        else:
            self._line.append(c)


def checksum(payload: bytes) -> bytes:
    return b"%02x" % (sum(payload) & 0xFF)


def frame(payload: bytes) -> bytes:
    """``$payload#xx``; ``payload`` must already be escaped where it is binary."""
    return b"$" + payload + b"#" + checksum(payload)


def escape_binary(data: bytes) -> bytes:
    """Binary data in a reply (``qXfer``): ``#``, ``$``, ``}`` and ``*`` escaped as QEMU's
    memtox does."""
    out = bytearray()
    for c in data:
        if c in (0x23, 0x24, 0x2A, 0x7D):
            out += bytes((0x7D, c ^ 0x20))
        else:
            out.append(c)
    return bytes(out)
