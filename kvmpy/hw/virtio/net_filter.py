"""virtio-net's MAC addresses and receive filter: QEMU's default MACs (net/net.c,
qemu_macaddr_default_if_unset), its ``receive_filter`` and the control commands that set it
(virtio spec §5.1.6.5.1 receive modes, §5.1.6.5.2 MAC table, §5.1.6.5.3 VLAN table).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kvmpy.hw.virtio.virtqueue import VirtqElement, Virtqueue
from kvmpy.qom import InvalidPropertyValue, Property

MAC_TABLE_ENTRIES = 64
MAX_VLAN = 1 << 12
RX_MODES = ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")
"""VIRTIO_NET_CTRL_RX commands 0..5, each with a 1-byte on/off."""
VLAN_ADD, VLAN_DEL = 0, 1
_BROADCAST = b"\xff" * 6
_VLAN_TPID = b"\x81\x00"


def parse_mac(text: str) -> bytes | None:
    """``52:54:00:12:34:56`` (or with ``-``) as 6 bytes; None when malformed (qdev's set_mac)."""
    parts = text.replace("-", ":").split(":")
    if len(text) != 17 or len(parts) != 6 or any(
            len(p) != 2 or any(c not in "0123456789abcdefABCDEF" for c in p) for p in parts):
        return None
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class MacProperty(Property[str]):
    """A ``mac=`` property: refuses what is not a MAC address."""

    def parse(self, text: str) -> str:
        if parse_mac(text) is None:
            raise InvalidPropertyValue(text)
        return text


class MacAddressPool:
    """QEMU's default MACs: 52:54:00:12:34:XX with the lowest XX >= 0x56 that no NIC of the
    VM uses, a NIC given such an address explicitly counting as a user too."""

    BASE = bytes.fromhex("5254001234")

    def __init__(self) -> None:
        self.users: Counter[int] = Counter()

    def claim(self, mac: bytes | None) -> bytes:
        """The address of a new NIC: ``mac`` (noted as used), or the next free default."""
        if mac is None:
            free = next((last for last in range(0x56, 0xFF) if not self.users[last]), 0xFF)
            mac = self.BASE + bytes([free])
        if mac[:5] == self.BASE:
            self.users[mac[5]] += 1
        return mac

    def release(self, mac: bytes) -> None:
        if mac[:5] == self.BASE and self.users[mac[5]] > 0:
            self.users[mac[5]] -= 1


DEFAULT_MACS = MacAddressPool()
"""The pool of NICs made without a System (tests, library use); a System keeps its own."""


class CommandData:
    """The device-readable bytes of a control command after its class and command bytes."""

    def __init__(self, vq: Virtqueue, elem: VirtqElement, skip: int) -> None:
        self.vq, self.elem, self.skip = vq, elem, skip
        self.size = elem.out_size - skip

    def read(self, offset: int, size: int) -> bytes:
        """At most ``size`` bytes from ``offset`` (fewer at the end)."""
        if size <= 0:
            return b""
        return b"".join(self.vq.views(self.elem.out, self.skip + offset, size))


@dataclass
class RxFilter:
    """What the driver lets in.  After reset everything (promiscuous, as QEMU for drivers
    that never set a mode); with CTRL_VLAN negotiated, no tagged frame until its VLAN is
    added."""

    promisc: bool = True
    allmulti: bool = False
    alluni: bool = False
    nomulti: bool = False
    nouni: bool = False
    nobcast: bool = False
    mac_table: list[str] = field(default_factory=list)
    """Unicast addresses first, multicast from ``first_multi`` on."""
    first_multi: int = 0
    uni_overflow: bool = False
    multi_overflow: bool = False
    vlans: list[int] = field(default_factory=lambda: [0] * (MAX_VLAN // 32))
    """Bitmap of the VLAN ids let through (32 per word)."""

    def allow_all_vlans(self, allow: bool) -> None:
        self.vlans = [0xFFFFFFFF if allow else 0] * (MAX_VLAN // 32)

    def accepts(self, frame: memoryview | bytes, mac: str) -> bool:
        """QEMU's receive_filter for an Ethernet frame and the NIC's address ``mac``."""
        if self.promisc:
            return True
        head = bytes(frame[:16]).ljust(16, b"\0")
        if head[12:14] == _VLAN_TPID:
            vid = int.from_bytes(head[14:16], "big") & 0xFFF
            if not self.vlans[vid >> 5] >> (vid & 31) & 1:
                return False
        dest = format_mac(head[:6])
        if head[0] & 1:
            if head[:6] == _BROADCAST:
                return not self.nobcast
            if self.nomulti:
                return False
            if self.allmulti or self.multi_overflow:
                return True
            return dest in self.mac_table[self.first_multi:]
        if self.nouni:
            return False
        if self.alluni or self.uni_overflow or dest == mac:
            return True
        return dest in self.mac_table[:self.first_multi]

    # -- control commands: True when done (VIRTIO_NET_OK), False for VIRTIO_NET_ERR --------

    def set_rx_mode(self, cmd: int, data: CommandData) -> bool:
        on = data.read(0, 1)
        if len(on) != 1 or cmd >= len(RX_MODES):
            return False
        setattr(self, RX_MODES[cmd], bool(on[0]))
        return True

    def set_mac_table(self, data: CommandData) -> bool:
        """Two tables (unicast, multicast), each a u32 count then 6-byte addresses; a table
        longer than the device keeps is an overflow: that kind of address all passes."""
        table: list[str] = []
        overflow = [False, False]
        first_multi = pos = 0
        for kind in (0, 1):
            raw = data.read(pos, 4)
            if len(raw) != 4:
                return False
            entries = int.from_bytes(raw, "little")
            pos += 4
            rest = data.size - pos
            if entries * 6 > rest or (kind == 1 and entries * 6 != rest):
                return False
            if entries <= MAC_TABLE_ENTRIES - len(table):
                macs = data.read(pos, 6 * entries)
                table += [format_mac(macs[i:i + 6]) for i in range(0, len(macs), 6)]
            else:
                overflow[kind] = True
            pos += 6 * entries
            if kind == 0:
                first_multi = len(table)
        self.mac_table, self.first_multi = table, first_multi
        self.uni_overflow, self.multi_overflow = overflow
        return True

    def set_vlan(self, cmd: int, data: CommandData) -> bool:
        raw = data.read(0, 2)
        if len(raw) != 2 or cmd not in (VLAN_ADD, VLAN_DEL):
            return False
        vid = int.from_bytes(raw, "little")
        if vid >= MAX_VLAN:
            return False
        if cmd == VLAN_ADD:
            self.vlans[vid >> 5] |= 1 << (vid & 31)
        else:
            self.vlans[vid >> 5] &= ~(1 << (vid & 31))
        return True
