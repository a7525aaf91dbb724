"""The virtio-net header in front of each frame on a tap opened with IFF_VNET_HDR (Linux's
``struct virtio_net_hdr``: flags u8, gso_type u8, hdr_len, gso_size, csum_start, csum_offset
u16 in the host's byte order, as the tun driver writes it; 12 bytes with num_buffers u16), and
the tun offload flags (TUNSETOFFLOAD) that decide which headers the kernel sends.

The kernel sends a header asking for work (NEEDS_CSUM, a GSO type) only when the offload was
turned on; :func:`check_received` makes sure a frame that reaches the NIC asks for nothing the
guest did not enable, whatever the kernel did: a missing checksum is computed here, a GSO frame
the guest cannot take is dropped.
"""

from __future__ import annotations

import struct

HDR_LEN = 10
"""sizeof(struct virtio_net_hdr): the kernel's default header size."""
HDR_LEN_MRG = 12
"""sizeof(struct virtio_net_hdr_mrg_rxbuf): what a VERSION_1 or MRG_RXBUF virtio-net uses."""

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

# virtio-net guest offload feature bits (virtio spec §5.1.3)
_GUEST_CSUM, _GUEST_TSO4, _GUEST_TSO6, _GUEST_ECN, _GUEST_UFO = 1, 7, 8, 9, 10

_HEADER = struct.Struct("=BBHHHH")

_GSO_NEEDS = {GSO_TCPV4: TUN_F_TSO4, GSO_TCPV6: TUN_F_TSO6, GSO_UDP: TUN_F_UFO}
"""The offload flag under which the kernel may send each GSO type (UDP_L4 and newer ones
are never enabled)."""


def tun_offloads(guest_offloads: int, has_ufo: bool = True) -> int:
    """The TUNSETOFFLOAD flags for a virtio-net guest offload word (QEMU's
    virtio_net_apply_guest_offloads and tap_fd_set_offload): nothing without the checksum
    offload, ECN only with TSO, UFO only where the kernel has it."""
    if not guest_offloads >> _GUEST_CSUM & 1:
        return 0
    flags = TUN_F_CSUM
    if guest_offloads >> _GUEST_TSO4 & 1:
        flags |= TUN_F_TSO4
    if guest_offloads >> _GUEST_TSO6 & 1:
        flags |= TUN_F_TSO6
    if flags & (TUN_F_TSO4 | TUN_F_TSO6) and guest_offloads >> _GUEST_ECN & 1:
        flags |= TUN_F_TSO_ECN
    if has_ufo and guest_offloads >> _GUEST_UFO & 1:
        flags |= TUN_F_UFO
    return flags


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of ``data`` (big-endian words, an odd byte padded)."""
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\0"
    total = int.from_bytes(raw, "big")
    # Folding a big number by 16-bit words: its value mod 0xFFFF is the one's complement sum.
    folded = total % 0xFFFF
    return 0xFFFF if folded == 0 and total else folded


def check_received(frame: bytes, hdr_len: int, offloads: int) -> tuple[bytes | None, str]:
    """A frame read from the tap, header first, made fit for a guest that enabled
    ``offloads`` (TUN_F_* flags).  Returns the frame (changed where its header asked for a
    checksum the guest does not compute) or None and why it cannot be delivered."""
    if len(frame) < hdr_len:
        return None, f"{len(frame)} bytes, shorter than the {hdr_len}-byte vnet header"
    flags, gso_type, _, _, csum_start, csum_offset = _HEADER.unpack_from(frame)
    gso = gso_type & ~GSO_ECN
    if gso != GSO_NONE:
        need = _GSO_NEEDS.get(gso)
        if need is None or not offloads & need or not offloads & TUN_F_CSUM or \
                (gso_type & GSO_ECN and not offloads & TUN_F_TSO_ECN):
            return None, f"GSO type 0x{gso_type:x} the guest did not enable"
    if offloads & TUN_F_CSUM or not flags & (F_NEEDS_CSUM | F_DATA_VALID):
        return frame, ""
    # No checksum offload: the guest takes plain frames with their checksums done, behind
    # an empty header (num_buffers, if any, stays).
    fixed = bytearray(frame)
    fixed[:HDR_LEN] = bytes(HDR_LEN)
    if flags & F_NEEDS_CSUM:
        start = hdr_len + csum_start
        field = start + csum_offset
        if field + 2 > len(frame):
            return None, (f"checksum at {csum_start}+{csum_offset} outside the "
                          f"{len(frame) - hdr_len}-byte frame")
        # The field holds the pseudo-header's sum already; the rest is summed here.
        fixed[field:field + 2] = struct.pack(">H", ~ones_sum(fixed[start:]) & 0xFFFF)
    return bytes(fixed), ""
