"""``-netdev user`` options and forwarding rules, checked and worded as QEMU 7.2's
``net/slirp.c`` (``net_slirp_init``, ``slirp_hostfwd``, ``slirp_guestfwd``), with its defaults:
network 10.0.2.0/24, host 10.0.2.2, DNS 10.0.2.3, first DHCP address 10.0.2.15, IPv6
fec0::/64 with host ::2 and DNS ::3.

Numbers and addresses are read as QEMU reads them (C ``strtol``, glibc ``inet_aton``), so
``hostfwd=tcp::0x16-:010`` means what it means to QEMU.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from kvmpy import qom
from kvmpy.errors import ConfigError

if TYPE_CHECKING:
    from kvmpy.net.slirp import SlirpConfig

Props = Mapping[str, "str | Sequence[str]"]
"""Option values; a key that may repeat (``hostfwd``, ``guestfwd``, ``dnssearch``) may map to
a list of its values in order."""

LIST_KEYS = ("hostfwd", "guestfwd", "dnssearch")
STRING_KEYS = ("hostname", "ip", "net", "host", "tftp", "bootfile", "dhcpstart", "dns",
               "domainname", "ipv6-prefix", "ipv6-host", "ipv6-dns", "smb", "smbserver",
               "tftp-server-name", "ipv6-net")
BOOL_KEYS = ("restrict", "ipv4", "ipv6")
INT_KEYS = ("ipv6-prefixlen",)
ID_KEYS = ("id", "type")

IPV4_ANY = bytes(4)


# -- C parsing helpers, as net/slirp.c uses them ------------------------------------------------


def _strtol(text: str, base: int) -> tuple[int, str]:
    """C ``strtol``: (value, unparsed rest); no digits gives (0, text)."""
    pos = len(text) - len(text.lstrip(" \t\n\v\f\r"))
    sign = 1
    if text[pos:pos + 1] in ("+", "-"):
        sign = -1 if text[pos] == "-" else 1
        pos += 1
    digits = "0123456789abcdef"
    hex_prefix = text[pos:pos + 2].lower() == "0x" and len(text) > pos + 2 \
        and text[pos + 2].lower() in digits
    if base in (0, 16) and hex_prefix:
        pos += 2
        base = 16
    elif base == 0:
        base = 8 if text[pos:pos + 1] == "0" else 10
    digits = digits[:base]
    end = pos
    while end < len(text) and text[end].lower() in digits:
        end += 1
    if end == pos:
        return 0, text
    return sign * int(text[pos:end], base), text[end:]


def _aton(text: str) -> bytes | None:
    """glibc ``inet_aton`` (accepts ``10.2``, ``0x0a000202``); None when it fails."""
    try:
        return socket.inet_aton(text)
    except (OSError, ValueError):
        return None


def _pton6(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None


def _sep(text: str, sep: str, size: int) -> tuple[str, str] | None:
    """QEMU's ``get_str_sep``: (field before ``sep`` cut to ``size - 1`` chars, rest)."""
    pos = text.find(sep)
    if pos < 0:
        return None
    return text[:pos][:size - 1], text[pos + 1:]


def _u32(packed: bytes) -> int:
    return int.from_bytes(packed, "big")


def _packed(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "big")


def _in6_equal_net(a: bytes, b: bytes, prefix_len: int) -> bool:
    """QEMU's ``in6_equal_net``: the first ``prefix_len`` bits agree."""
    whole, bits = divmod(prefix_len, 8)
    if a[:whole] != b[:whole]:
        return False
    return bits == 0 or a[whole] >> (8 - bits) == b[whole] >> (8 - bits)


# -- forwarding rules -------------------------------------------------------------------------


class HostFwd(NamedTuple):
    """``[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport``."""

    is_udp: bool
    host_addr: bytes
    host_port: int
    guest_addr: bytes
    guest_port: int


def parse_hostfwd(rule: str) -> HostFwd:
    """QEMU's ``slirp_hostfwd`` syntax checks, with its reasons."""

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"Invalid host forwarding rule '{rule}' ({reason})")

    part = _sep(rule, ":", 256)
    if part is None:
        raise fail("No : separators")
    proto, rest = part
    if proto not in ("tcp", "", "udp"):
        raise fail("Bad protocol name")
    part = _sep(rest, ":", 256)
    if part is None:
        raise fail("Missing : separator")
    text, rest = part
    host_addr = _aton(text) if text else IPV4_ANY
    if host_addr is None:
        raise fail("Bad host address")
    part = _sep(rest, "-", 256)
    if part is None:
        raise fail("Bad host port separator")
    host_port, left = _strtol(part[0], 0)
    if left or not 0 <= host_port <= 65535:
        raise fail("Bad host port")
    part = _sep(part[1], ":", 256)
    if part is None:
        raise fail("Missing guest address")
    text, rest = part
    guest_addr = _aton(text) if text else IPV4_ANY
    if guest_addr is None:
        raise fail("Bad guest address")
    guest_port, left = _strtol(rest, 0)
    if left or not 1 <= guest_port <= 65535:
        raise fail("Bad guest port")
    return HostFwd(proto == "udp", host_addr, host_port, guest_addr, guest_port)


def parse_hostfwd_remove(rule: str) -> tuple[bool, bytes, int] | None:
    """``[tcp|udp]:[hostaddr]:hostport`` of ``hostfwd_remove``; None: "invalid format"."""
    part = _sep(rule, ":", 256)
    if part is None or part[0] not in ("tcp", "", "udp"):
        return None
    is_udp = part[0] == "udp"
    part = _sep(part[1], ":", 256)
    if part is None:
        return None
    text, rest = part
    host_addr = _aton(text) if text else IPV4_ANY
    if host_addr is None:
        return None
    port, left = _strtol(rest, 10)   # qemu_strtoi: the whole string, base 10
    if left or rest.strip() == "" or not -(1 << 31) <= port < 1 << 31:
        return None
    return is_udp, host_addr, port


class GuestFwd(NamedTuple):
    """``tcp:[server]:port-cmd:COMMAND`` (or ``-DEVICE``: a chardev, not built)."""

    server: bytes
    port: int
    target: str


def parse_guestfwd(rule: str) -> GuestFwd:
    """QEMU's ``slirp_guestfwd`` syntax checks."""
    invalid = ConfigError(f"Invalid guest forwarding rule '{rule}'")
    part = _sep(rule, ":", 128)
    if part is None or part[0] not in ("tcp", ""):
        raise invalid
    part = _sep(part[1], ":", 128)
    if part is None:
        raise invalid
    text, rest = part
    server = _aton(text) if text else IPV4_ANY
    if server is None:
        raise invalid
    part = _sep(rest, "-", 128)
    if part is None:
        raise invalid
    port, left = _strtol(part[0], 10)
    if left or not 1 <= port <= 65535:
        raise invalid
    return GuestFwd(server, port, part[1])


# -- options ----------------------------------------------------------------------------------


@dataclass
class UserOptions:
    """``-netdev user`` after QEMU's checks (``net_slirp_init``)."""

    slirp: SlirpConfig
    hostfwd: list[str] = field(default_factory=list)
    guestfwd: list[str] = field(default_factory=list)
    smb: str | None = None
    smbserver: bytes = IPV4_ANY


def _values(props: Props, key: str) -> list[str]:
    value = props.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _string(props: Props, key: str) -> str | None:
    values = _values(props, key)
    return values[-1] if values else None


def _check_keys(props: Props) -> None:
    known = (*LIST_KEYS, *STRING_KEYS, *BOOL_KEYS, *INT_KEYS, *ID_KEYS)
    for key in props:
        if key not in known:
            raise ConfigError(f"Invalid parameter '{key}'")


def _bool(props: Props, key: str) -> bool | None:
    text = _string(props, key)
    return None if text is None else qom.parse_bool(key, text)


def _ipv6_net(props: Props) -> tuple[str | None, int]:
    """``ipv6-net=PREFIX[/LEN]`` (``net_client_init``) or ipv6-prefix / ipv6-prefixlen."""
    prefix = _string(props, "ipv6-prefix")
    length = 0
    text = _string(props, "ipv6-prefixlen")
    if text is not None:
        length, left = _strtol(text, 0)
        if left or not text.strip():
            raise ConfigError("Parameter 'ipv6-prefixlen' expects an int64 value")
    net = _string(props, "ipv6-net")
    if net is not None:
        if not net:
            raise ConfigError("Parameter 'ipv6-net' expects a valid IPv6 prefix")
        prefix, slash, text = net.partition("/")
        length = 64
        if slash:
            length, left = _strtol(text, 10)
            if left or not text.strip() or length < 0:
                raise ConfigError("Parameter 'ipv6-prefixlen' expects a number")
    return prefix, length


def _ipv4_network(vnetwork: str) -> tuple[int, int]:
    """``net=ADDR[/MASK|/BITS]`` -> (network, mask), masks by class when none is given."""
    part = _sep(vnetwork, "/", 20)
    if part is None:
        packed = _aton(vnetwork)
        if packed is None:
            raise ConfigError("Failed to parse netmask")
        net = _u32(packed)
        if not net & 0x80000000:
            mask = 0xFF000000               # class A
        elif net & 0xFFF00000 == 0xAC100000:
            mask = 0xFFF00000               # private 172.16.0.0/12
        elif net & 0xC0000000 == 0x80000000:
            mask = 0xFFFF0000               # class B
        elif net & 0xFFFF0000 == 0xC0A80000:
            mask = 0xFFFF0000               # private 192.168.0.0/16
        elif net & 0xFFFF0000 == 0xC6120000:
            mask = 0xFFFE0000               # tests 198.18.0.0/15
        elif net & 0xE0000000 == 0xE0000000:
            mask = 0xFFFFFF00               # class C
        else:
            mask = 0xFFFFFFF0               # multicast/reserved
        return net & mask, mask
    packed = _aton(part[0])
    if packed is None:
        raise ConfigError("Failed to parse netmask")
    shift, left = _strtol(part[1], 10)
    if left:
        packed_mask = _aton(part[1])
        if packed_mask is None:
            raise ConfigError("Failed to parse netmask (trailing chars)")
        mask = _u32(packed_mask)
    elif not 4 <= shift <= 32:
        raise ConfigError("Invalid netmask provided (must be in range 4-32)")
    else:
        mask = (0xFFFFFFFF << (32 - shift)) & 0xFFFFFFFF
    return _u32(packed) & mask, mask


def parse_options(props: Props) -> UserOptions:
    """Check ``-netdev user`` options as QEMU 7.2 does, in its order and words."""
    _check_keys(props)
    restricted = bool(_bool(props, "restrict"))
    has_ipv4, has_ipv6 = _bool(props, "ipv4"), _bool(props, "ipv6")
    ipv4 = ipv6 = True
    if (has_ipv6 and has_ipv4 is None) or has_ipv4 is False:
        ipv4 = False
    if (has_ipv4 and has_ipv6 is None) or has_ipv6 is False:
        ipv6 = False
    vnet = _string(props, "net")
    if vnet is None and _string(props, "ip") is not None:
        vnet = f"{_string(props, 'ip')}/24"
    vhost, vdns = _string(props, "host"), _string(props, "dns")
    prefix6, prefix6_len = _ipv6_net(props)
    vhost6, vdns6 = _string(props, "ipv6-host"), _string(props, "ipv6-dns")
    if not ipv4 and (vnet is not None or vhost is not None or vdns is not None):
        raise ConfigError("IPv4 disabled but netmask/host/dns provided")
    if not ipv6 and (prefix6 is not None or vhost6 is not None or vdns6 is not None):
        raise ConfigError("IPv6 disabled but prefix/host6/dns6 provided")
    if not ipv4 and not ipv6:
        raise ConfigError("IPv4 and IPv6 disabled")

    net, mask = 0x0A000200, 0xFFFFFF00
    host, dhcp, dns = 0x0A000202, 0x0A00020F, 0x0A000203
    if vnet is not None:
        net, mask = _ipv4_network(vnet)
        host = net | (0x0202 & ~mask)
        dhcp = net | (0x020F & ~mask)
        dns = net | (0x0203 & ~mask)
    if vhost is not None:
        packed = _aton(vhost)
        if packed is None:
            raise ConfigError("Failed to parse host")
        host = _u32(packed)
    if host & mask != net:
        raise ConfigError("Host doesn't belong to network")
    if vdns is not None:
        packed = _aton(vdns)
        if packed is None:
            raise ConfigError("Failed to parse DNS")
        dns = _u32(packed)
    if restricted and dns & mask != net:
        raise ConfigError("DNS doesn't belong to network")
    if dns == host:
        raise ConfigError("DNS must be different from host")
    vdhcp = _string(props, "dhcpstart")
    if vdhcp is not None:
        packed = _aton(vdhcp)
        if packed is None:
            raise ConfigError("Failed to parse DHCP start address")
        dhcp = _u32(packed)
    if dhcp & mask != net:
        raise ConfigError("DHCP doesn't belong to network")
    if dhcp in (host, dns):
        raise ConfigError("DHCP must be different from host and DNS")
    smbserver = IPV4_ANY
    vsmbserver = _string(props, "smbserver")
    if vsmbserver is not None:
        packed = _aton(vsmbserver)
        if packed is None:
            raise ConfigError("Failed to parse SMB address")
        smbserver = packed

    ip6_prefix = _pton6(prefix6 if prefix6 is not None else "fec0::")
    if ip6_prefix is None:
        raise ConfigError("Failed to parse IPv6 prefix")
    prefix6_len = prefix6_len or 64
    if not 0 <= prefix6_len <= 126:
        raise ConfigError("Invalid IPv6 prefix provided (IPv6 prefix length must be between "
                          "0 and 126)")
    if vhost6 is not None:
        ip6_host = _pton6(vhost6)
        if ip6_host is None:
            raise ConfigError("Failed to parse IPv6 host")
        if not _in6_equal_net(ip6_prefix, ip6_host, prefix6_len):
            raise ConfigError("IPv6 Host doesn't belong to network")
    else:
        ip6_host = ip6_prefix[:15] + bytes([ip6_prefix[15] | 2])
    if vdns6 is not None:
        ip6_dns = _pton6(vdns6)
        if ip6_dns is None:
            raise ConfigError("Failed to parse IPv6 DNS")
        if restricted and not _in6_equal_net(ip6_prefix, ip6_dns, prefix6_len):
            raise ConfigError("IPv6 DNS doesn't belong to network")
    else:
        ip6_dns = ip6_prefix[:15] + bytes([ip6_prefix[15] | 3])

    domainname = _string(props, "domainname")
    if domainname is not None and not domainname:
        raise ConfigError("'domainname' parameter cannot be empty")
    if domainname is not None and len(domainname.encode()) > 255:
        raise ConfigError("'domainname' parameter cannot exceed 255 bytes")
    hostname = _string(props, "hostname")
    if hostname is not None and len(hostname.encode()) > 255:
        raise ConfigError("'vhostname' parameter cannot exceed 255 bytes")
    tftp_server_name = _string(props, "tftp-server-name")
    if tftp_server_name is not None and len(tftp_server_name.encode()) > 255:
        raise ConfigError("'tftp-server-name' parameter cannot exceed 255 bytes")
    bootfile = _string(props, "bootfile")
    if bootfile is not None and len(bootfile.encode()) > 127:
        # libslirp refuses it (BOOTP's 128-byte file field); QEMU 7.2 then aborts.
        raise ConfigError("'bootfile' parameter cannot exceed 127 bytes")

    from kvmpy.net.slirp import SlirpConfig

    config = SlirpConfig(
        restricted=restricted, in_enabled=ipv4, vnetwork=_packed(net), vnetmask=_packed(mask),
        vhost=_packed(host), in6_enabled=ipv6, vprefix_addr6=ip6_prefix,
        vprefix_len=prefix6_len, vhost6=ip6_host, vhostname=hostname,
        tftp_server_name=tftp_server_name, tftp_path=_string(props, "tftp"),
        bootfile=bootfile, vdhcp_start=_packed(dhcp), vnameserver=_packed(dns),
        vnameserver6=ip6_dns, vdnssearch=_values(props, "dnssearch"), vdomainname=domainname)
    return UserOptions(config, _values(props, "hostfwd"), _values(props, "guestfwd"),
                       _string(props, "smb"), smbserver)
