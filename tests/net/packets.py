"""Small hand-built Ethernet/ARP/IPv4/UDP/TCP/DHCP frames, and their parsers, for speaking to
a network back-end without a guest (RFC 826, 791, 768, 793, 2131)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
GUEST_MAC = bytes.fromhex("525400123456")   # QEMU's first default NIC address
GUEST_IP = "10.0.2.15"
HOST_IP = "10.0.2.2"

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def ip4(text: str) -> bytes:
    return socket.inet_aton(text)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def arp_request(sender_ip: str, target_ip: str, sender_mac: bytes = GUEST_MAC) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, sender_mac, ip4(sender_ip),
                       bytes(6), ip4(target_ip))
    return ethernet(BROADCAST, sender_mac, ETH_P_ARP, body)


def arp_reply(sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 2, sender_mac, sender_ip,
                       target_mac, target_ip)
    return ethernet(target_mac, sender_mac, ETH_P_ARP, body)


@dataclass
class Arp:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse_arp(frame: bytes) -> Arp | None:
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    _, _, _, _, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    return Arp(op, sha, spa, tha, tpa)


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto,
                         0, ip4(src), ip4(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet, UDP checksum 0 (none)."""
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def tcp(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
        payload: bytes = b"", window: int = 65535) -> bytes:
    """An IPv4/TCP segment with a correct checksum (an MSS option on SYN)."""
    options = struct.pack("!BBH", 2, 4, 1460) if flags & TCP_SYN else b""
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0,
                         0) + options
    pseudo = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    sum_ = checksum(pseudo + header + payload)
    header = header[:16] + struct.pack("!H", sum_) + header[18:]
    return ipv4(src, dst, 6, header + payload)


@dataclass
class Ip:
    src: str
    dst: str
    proto: int
    payload: bytes


def parse_ipv4(frame: bytes) -> Ip | None:
    if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    packet = frame[14:]
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    return Ip(socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), packet[9],
              packet[ihl:total])


@dataclass
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


def parse_tcp(frame: bytes) -> Segment | None:
    ip = parse_ipv4(frame)
    if ip is None or ip.proto != 6:
        return None
    sport, dport, seq, ack, offset, flags = struct.unpack("!HHIIBB", ip.payload[:14])
    return Segment(ip.src, sport, ip.dst, dport, seq, ack, flags,
                   ip.payload[(offset >> 4) * 4:])


DHCP_MAGIC = bytes([99, 130, 83, 99])


def dhcp_discover(xid: int, mac: bytes = GUEST_MAC) -> bytes:
    """A DHCPDISCOVER from 0.0.0.0:68 to 255.255.255.255:67, as an Ethernet frame."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                        bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")
    options = DHCP_MAGIC + bytes([53, 1, 1, 255])
    payload = (bootp + options).ljust(300, b"\0")
    return ethernet(BROADCAST, mac, ETH_P_IP, udp("0.0.0.0", 68, "255.255.255.255", 67, payload))


@dataclass
class Dhcp:
    op: int
    xid: int
    yiaddr: str
    options: dict[int, bytes]


def parse_dhcp(frame: bytes) -> Dhcp | None:
    ip = parse_ipv4(frame)
    if ip is None or ip.proto != 17:
        return None
    sport, dport = struct.unpack("!HH", ip.payload[:4])
    bootp = ip.payload[8:]
    if (sport, dport) != (67, 68) or len(bootp) < 240 or bootp[236:240] != DHCP_MAGIC:
        return None
    options: dict[int, bytes] = {}
    pos = 240
    while pos < len(bootp) and bootp[pos] != 255:
        if bootp[pos] == 0:
            pos += 1
            continue
        code, size = bootp[pos], bootp[pos + 1]
        options[code] = bootp[pos + 2:pos + 2 + size]
        pos += 2 + size
    return Dhcp(bootp[0], struct.unpack("!I", bootp[4:8])[0], socket.inet_ntoa(bootp[16:20]),
                options)
