"""``-netdev user`` (libslirp) without a guest: hand-built frames from a fake NIC, a real
asyncio main loop, and host sockets on 127.0.0.1 only.

Nothing leaves the machine: the guest talks to 10.0.2.2 (the host's loopback) or to hostfwd /
guestfwd rules, most tests run with ``restrict=on``, and no frame goes to the DNS forwarder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import pytest

from kvmpy import cli
from kvmpy.errors import ConfigError
from kvmpy.monitor import hmp
from kvmpy.net import slirp as slirp_wrapper
from kvmpy.net.base import netdev_class
from kvmpy.net.user import (
    UserNetdev,
    hmp_hostfwd_add,
    hmp_hostfwd_remove,
    hmp_info_usernet,
    parse_options,
)

from . import packets as P
from .conftest import FakeNic, MainLoop

pytestmark = pytest.mark.timeout(60)

try:
    slirp_wrapper.load()
except OSError:
    pytest.skip("libslirp0 is not installed", allow_module_level=True)

SLIRP_MAC = bytes.fromhex("52550a000202")   # libslirp's own address: 52:55 + 10.0.2.2


def new_netdev(netdev_id: str, options: Mapping[str, str | list[str]]) -> UserNetdev:
    """As kvmpy.net.setup creates it: the last value of each key in ``props``, every value
    of a list-typed key (``hostfwd``) in ``lists``."""
    props = {key: value if isinstance(value, str) else value[-1]
             for key, value in options.items()}
    lists = {key: value for key, value in options.items() if isinstance(value, list)}
    return UserNetdev(netdev_id, props, lists)


@pytest.fixture
def make_netdev(main_loop: MainLoop) -> Iterator[object]:
    made: list[UserNetdev] = []

    def make(**props: str | list[str]) -> tuple[UserNetdev, FakeNic]:
        netdev = new_netdev(f"net{len(made)}", props)
        made.append(netdev)
        nic = FakeNic(netdev)
        netdev.start(main_loop)
        return netdev, nic

    yield make
    for netdev in made:
        netdev.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def arp_host(main_loop: MainLoop, nic: FakeNic, target: str = P.HOST_IP) -> P.Arp:
    nic.netdev.transmit(P.arp_request(P.GUEST_IP, target))
    return main_loop.run_until(lambda: nic.take(
        lambda f: (a := P.parse_arp(f)) is not None and a.op == 2 and a))  # type: ignore


class GuestTcp:
    """The guest's end of one TCP connection, segment by segment."""

    def __init__(self, main_loop: MainLoop, nic: FakeNic, dst: str, dport: int,
                 sport: int = 40000) -> None:
        self.loop, self.nic = main_loop, nic
        self.dst, self.dport, self.sport = dst, dport, sport
        self.snd_nxt = 1000
        self.rcv_nxt = 0
        self.received = b""

    def _send(self, flags: int, payload: bytes = b"") -> None:
        self.nic.netdev.transmit(P.ethernet(
            SLIRP_MAC, self.nic.mac, P.ETH_P_IP,
            P.tcp(P.GUEST_IP, self.sport, self.dst, self.dport, self.snd_nxt, self.rcv_nxt,
                  flags, payload)))
        self.snd_nxt += len(payload) + (1 if flags & (P.TCP_SYN | P.TCP_FIN) else 0)

    def _mine(self, frame: bytes) -> P.Segment | None:
        seg = P.parse_tcp(frame)
        if seg is None or (seg.src, seg.sport, seg.dport) != (self.dst, self.dport, self.sport):
            return None
        return seg

    def next_segment(self) -> P.Segment:
        seg: P.Segment = self.loop.run_until(lambda: self.nic.take(self._mine))
        return seg

    def connect(self) -> P.Segment:
        """SYN; returns the answer (SYN-ACK, or RST when refused), ACKing a SYN-ACK."""
        self._send(P.TCP_SYN)
        seg = self.next_segment()
        if seg.flags & P.TCP_SYN:
            self.rcv_nxt = seg.seq + 1
            self._send(P.TCP_ACK)
        return seg

    def send(self, data: bytes) -> None:
        self._send(P.TCP_PSH | P.TCP_ACK, data)

    def recv(self, size: int) -> bytes:
        """Collect in-order payload until ``size`` bytes came, ACKing as it goes."""
        while len(self.received) < size:
            seg = self.next_segment()
            if seg.payload and seg.seq == self.rcv_nxt:
                self.received += seg.payload
                self.rcv_nxt += len(seg.payload)
                self._send(P.TCP_ACK)
        data, self.received = self.received[:size], self.received[size:]
        return data


def accept_once(main_loop: MainLoop, server: socket.socket) -> socket.socket:
    server.setblocking(False)

    def try_accept() -> socket.socket | None:
        try:
            return server.accept()[0]
        except BlockingIOError:
            return None

    conn: socket.socket = main_loop.run_until(try_accept)
    conn.setblocking(False)
    return conn


def recv_on_loop(main_loop: MainLoop, conn: socket.socket, size: int) -> bytes:
    data = b""

    def more() -> bool:
        nonlocal data
        with contextlib.suppress(BlockingIOError):
            data += conn.recv(size - len(data))
        return len(data) >= size

    main_loop.run_until(more)
    return data


def usernet_ports(text: str) -> list[tuple[str, int, int]]:
    """(protocol, host port, guest port) of each HOST_FORWARD line of ``info usernet``."""
    rules = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].endswith("[HOST_FORWARD]"):
            rules.append((fields[0].split("[")[0], int(fields[3]), int(fields[5])))
    return rules


# -- the guest's network -----------------------------------------------------------------------


def test_registered_as_the_user_netdev_type() -> None:
    assert netdev_class("user") is UserNetdev
    assert UserNetdev.type_name == "netdev-user"


def test_arp_for_the_host_gets_libslirps_address(make_netdev, main_loop: MainLoop) -> None:
    _, nic = make_netdev(restrict="on")
    reply = arp_host(main_loop, nic)
    assert (reply.sender_ip, reply.sender_mac) == (P.ip4(P.HOST_IP), SLIRP_MAC)
    assert (reply.target_ip, reply.target_mac) == (P.ip4(P.GUEST_IP), P.GUEST_MAC)


def test_dhcp_discover_gets_an_offer_of_10_0_2_15(make_netdev, main_loop: MainLoop) -> None:
    _, nic = make_netdev(restrict="on")
    nic.netdev.transmit(P.dhcp_discover(0x1234ABCD))
    offer = main_loop.run_until(lambda: nic.take(P.parse_dhcp))
    assert (offer.op, offer.xid, offer.yiaddr) == (2, 0x1234ABCD, "10.0.2.15")
    assert offer.options[53] == b"\x02"                      # DHCPOFFER
    assert offer.options[54] == P.ip4("10.0.2.2")            # server identifier
    assert offer.options[1] == P.ip4("255.255.255.0")


def test_dhcp_follows_net_and_dhcpstart(make_netdev, main_loop: MainLoop) -> None:
    _, nic = make_netdev(restrict="on", net="192.168.76.0/24", dhcpstart="192.168.76.9")
    nic.netdev.transmit(P.dhcp_discover(7))
    offer = main_loop.run_until(lambda: nic.take(P.parse_dhcp))
    assert offer.yiaddr == "192.168.76.9"
    assert offer.options[54] == P.ip4("192.168.76.2")


def test_guest_tcp_to_10_0_2_2_reaches_the_hosts_loopback(make_netdev,
                                                          main_loop: MainLoop) -> None:
    # restrict=off: the only way to reach the host; the frames go to 127.0.0.1 only.
    _, nic = make_netdev()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        arp_host(main_loop, nic)
        guest = GuestTcp(main_loop, nic, P.HOST_IP, port)
        synack = guest.connect()
        assert synack.flags & (P.TCP_SYN | P.TCP_ACK) == P.TCP_SYN | P.TCP_ACK
        assert synack.ack == 1001
        conn = accept_once(main_loop, server)
        with conn:
            assert conn.getsockname() == ("127.0.0.1", port)
            guest.send(b"hello host")
            assert recv_on_loop(main_loop, conn, 10) == b"hello host"
            conn.sendall(b"hello guest")
            assert guest.recv(11) == b"hello guest"


def test_restrict_on_refuses_the_guests_connections(make_netdev, main_loop: MainLoop) -> None:
    _, nic = make_netdev(restrict="on")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        arp_host(main_loop, nic)
        answer = GuestTcp(main_loop, nic, P.HOST_IP, server.getsockname()[1]).connect()
        assert answer.flags & P.TCP_RST
        with pytest.raises(BlockingIOError):
            server.accept()


# -- hostfwd -----------------------------------------------------------------------------------


def guest_syn(main_loop: MainLoop, nic: FakeNic, guest_port: int) -> P.Segment:
    def match(frame: bytes) -> P.Segment | None:
        seg = P.parse_tcp(frame)
        if seg is not None and seg.dst == P.GUEST_IP and seg.dport == guest_port:
            return seg
        return None

    seg: P.Segment = main_loop.run_until(lambda: nic.take(match))
    return seg


def test_hostfwd_turns_a_host_connection_into_a_syn_to_the_guest(make_netdev,
                                                                 main_loop: MainLoop) -> None:
    port = free_port()
    _, nic = make_netdev(restrict="on", hostfwd=f"tcp:127.0.0.1:{port}-:8080")
    with socket.socket() as client:
        client.setblocking(False)
        assert client.connect_ex(("127.0.0.1", port)) in (0, 115)   # EINPROGRESS
        syn = guest_syn(main_loop, nic, 8080)
        assert syn.flags & (P.TCP_SYN | P.TCP_ACK) == P.TCP_SYN
        assert (syn.src, syn.dst) == ("10.0.2.2", "10.0.2.15")


def test_hostfwd_data_flows_both_ways(make_netdev, main_loop: MainLoop) -> None:
    port = free_port()
    netdev, nic = make_netdev(restrict="on", hostfwd=f"tcp:127.0.0.1:{port}-10.0.2.15:22")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.setblocking(False)
        syn = guest_syn(main_loop, nic, 22)
        # The guest answers as a listening socket would.
        seq = 5000
        nic.netdev.transmit(P.ethernet(SLIRP_MAC, nic.mac, P.ETH_P_IP, P.tcp(
            P.GUEST_IP, 22, syn.src, syn.sport, seq, syn.seq + 1, P.TCP_SYN | P.TCP_ACK)))
        guest = GuestTcp(main_loop, nic, syn.src, syn.sport, sport=22)
        guest.snd_nxt, guest.rcv_nxt = seq + 1, syn.seq + 1
        guest.next_segment()                                   # the ACK of our SYN-ACK
        guest.send(b"SSH-2.0-guest\r\n")
        assert recv_on_loop(main_loop, client, 15) == b"SSH-2.0-guest\r\n"
        client.sendall(b"SSH-2.0-host\r\n")
        assert guest.recv(14) == b"SSH-2.0-host\r\n"
        assert "ESTABLISHED" in netdev.connection_info()


def test_udp_hostfwd_reaches_the_guest(make_netdev, main_loop: MainLoop) -> None:
    port = free_port(socket.SOCK_DGRAM)
    _, nic = make_netdev(restrict="on", hostfwd=f"udp:127.0.0.1:{port}-:5353")
    arp_host(main_loop, nic)         # libslirp learns the guest's MAC
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"datagram", ("127.0.0.1", port))

        def match(frame: bytes) -> P.Ip | None:
            ip = P.parse_ipv4(frame)
            return ip if ip is not None and ip.proto == 17 else None

        ip = main_loop.run_until(lambda: nic.take(match))
    _, dport, length = struct.unpack("!HHH", ip.payload[:6])
    assert (ip.dst, dport, ip.payload[8:length]) == ("10.0.2.15", 5353, b"datagram")


def test_hostfwd_port_0_and_info_usernet(make_netdev, main_loop: MainLoop) -> None:
    netdev, nic = make_netdev(restrict="on",
                              hostfwd=["tcp:127.0.0.1:0-:22", "udp:127.0.0.1:0-:53"])
    text = hmp_info_usernet({"net0": netdev})
    lines = text.splitlines()
    assert lines[0] == "Hub -1 (net0):"
    assert lines[1] == ("  Protocol[State]    FD  Source Address  Port   Dest. Address  Port "
                        "RecvQ SendQ")
    rules = usernet_ports(text)
    assert [(proto, guest) for proto, _, guest in rules] == [("TCP", 22), ("UDP", 53)]
    tcp_port = rules[0][1]
    assert tcp_port != 0
    tcp_line = lines[2]
    # QEMU 7.2: "%-19s %3d %15s %5d %15s %5d %5d %5d"
    assert tcp_line.startswith("  TCP[HOST_FORWARD] ")
    assert tcp_line[23:] == f" {'127.0.0.1':>15} {tcp_port:5d} {'10.0.2.15':>15} {22:5d}" \
                            f" {0:5d} {0:5d}"
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=5):
        assert guest_syn(main_loop, nic, 22).flags & P.TCP_SYN


def test_hostfwd_rules_are_set_up_as_qemu_orders_them(make_netdev) -> None:
    # QEMU prepends each rule to its list, and libslirp lists its newest socket first: the
    # first rule given is the first line of "info usernet".
    netdev, _ = make_netdev(restrict="on", hostfwd=["tcp::0-:1", "tcp::0-:2", "tcp::0-:3"])
    assert [guest for _, _, guest in usernet_ports(netdev.connection_info())] == [1, 2, 3]


def test_hostfwd_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rule = f"tcp:127.0.0.1:{port}-:22"
        with pytest.raises(ConfigError) as info:
            new_netdev("n0", {"hostfwd": rule, "restrict": "on"})
    assert str(info.value) == f"Could not set up host forwarding rule '{rule}'"


@pytest.mark.parametrize(("rule", "reason"), [
    ("bogus", "No : separators"),
    ("icmp::1-:2", "Bad protocol name"),
    ("tcp:1", "Missing : separator"),
    ("tcp:1.2.3.4.5:1-:2", "Bad host address"),
    ("tcp::1:2", "Bad host port separator"),
    ("tcp::x-:2", "Bad host port"),
    ("tcp::65536-:2", "Bad host port"),
    ("tcp::-1-:2", "Bad guest address"),
    ("tcp::1-2", "Missing guest address"),
    ("tcp::1-10.0.2.256:2", "Bad guest address"),
    ("tcp::1-:0", "Bad guest port"),
    ("tcp::1-:", "Bad guest port"),
    ("tcp::1-:22x", "Bad guest port"),
    ("tcp::1-:65536", "Bad guest port"),
])
def test_hostfwd_syntax_errors_as_qemu(rule: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        new_netdev("n0", {"hostfwd": rule, "restrict": "on"})
    assert str(info.value) == f"Invalid host forwarding rule '{rule}' ({reason})"


def test_the_last_bad_rule_is_the_one_reported() -> None:
    with pytest.raises(ConfigError, match="'second'"):
        new_netdev("n0", {"hostfwd": ["first", "second"], "restrict": "on"})


def test_hostfwd_ports_are_c_numbers(make_netdev) -> None:
    # strtol(..., 0): hex and octal; an empty host port is port 0.
    netdev, _ = make_netdev(restrict="on", hostfwd=["tcp:127.0.0.1:-:0x16", "tcp::0-:010"])
    assert sorted(guest for _, _, guest in usernet_ports(netdev.connection_info())) == [8, 22]


# -- guestfwd ---------------------------------------------------------------------------------


def test_guestfwd_cmd_connects_the_guest_to_a_command(make_netdev,
                                                      main_loop: MainLoop) -> None:
    _, nic = make_netdev(restrict="on", guestfwd="tcp:10.0.2.100:1234-cmd:cat")
    arp_host(main_loop, nic, "10.0.2.100")
    guest = GuestTcp(main_loop, nic, "10.0.2.100", 1234)
    assert guest.connect().flags & P.TCP_SYN
    guest.send(b"echo me")
    assert guest.recv(7) == b"echo me"


@pytest.mark.parametrize("rule", ["bad", "udp:10.0.2.100:1-cmd:cat", "tcp:10.0.2.100:0-cmd:cat",
                                  "tcp:10.0.2.300:1-cmd:cat", "tcp:10.0.2.100:1"])
def test_guestfwd_syntax_errors(rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        new_netdev("n0", {"guestfwd": rule, "restrict": "on"})
    assert str(info.value) == f"Invalid guest forwarding rule '{rule}'"


def test_guestfwd_to_the_host_address_conflicts() -> None:
    rule = "tcp:10.0.2.2:80-cmd:cat"
    with pytest.raises(ConfigError) as info:
        new_netdev("n0", {"guestfwd": rule, "restrict": "on"})
    assert str(info.value) == f"Conflicting/invalid host:port in guest forwarding rule '{rule}'"


def test_guestfwd_to_a_chardev(make_netdev, main_loop: MainLoop) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        _, nic = make_netdev(restrict="on", guestfwd=f"tcp:10.0.2.100:1234-tcp:127.0.0.1:{port}")
        conn = accept_once(main_loop, server)          # the chardev connects at creation
        with conn:
            arp_host(main_loop, nic, "10.0.2.100")
            guest = GuestTcp(main_loop, nic, "10.0.2.100", 1234)
            assert guest.connect().flags & P.TCP_SYN
            guest.send(b"ping")
            assert recv_on_loop(main_loop, conn, 4) == b"ping"
            conn.sendall(b"pong")
            assert guest.recv(4) == b"pong"


def test_guestfwd_device_that_cannot_open() -> None:
    with pytest.raises(ConfigError) as info:
        new_netdev("n0", {"guestfwd": "tcp:10.0.2.100:80-bogus:x", "restrict": "on"})
    assert str(info.value) == "Could not open guest forwarding device 'guestfwd.tcp.80': " \
                              "'bogus:x' is not a valid char driver"


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("props", "message"), [
    ({"foo": "bar"}, "Invalid parameter 'foo'"),
    ({"restrict": "maybe"}, "Parameter 'restrict' expects 'on' or 'off'"),
    ({"ipv4": "off", "ipv6": "off"}, "IPv4 and IPv6 disabled"),
    ({"ipv6": "on", "net": "10.0.3.0/24"}, "IPv4 disabled but netmask/host/dns provided"),
    ({"ipv4": "on", "ipv6-prefix": "fec1::"}, "IPv6 disabled but prefix/host6/dns6 provided"),
    ({"net": "10.0.3.0/33"}, "Invalid netmask provided (must be in range 4-32)"),
    ({"net": "10.0.3.0/3"}, "Invalid netmask provided (must be in range 4-32)"),
    ({"net": "nonsense"}, "Failed to parse netmask"),
    ({"net": "10.0.3.0/255.255.x"}, "Failed to parse netmask (trailing chars)"),
    ({"host": "10.0.3.2"}, "Host doesn't belong to network"),
    ({"host": "x"}, "Failed to parse host"),
    ({"dns": "x"}, "Failed to parse DNS"),
    ({"dns": "10.0.2.2"}, "DNS must be different from host"),
    ({"dns": "8.8.8.8", "restrict": "on"}, "DNS doesn't belong to network"),
    ({"dhcpstart": "10.0.3.15"}, "DHCP doesn't belong to network"),
    ({"dhcpstart": "10.0.2.3"}, "DHCP must be different from host and DNS"),
    ({"dhcpstart": ""}, "Failed to parse DHCP start address"),
    ({"smbserver": "x"}, "Failed to parse SMB address"),
    ({"ipv6-prefix": "x"}, "Failed to parse IPv6 prefix"),
    ({"ipv6-prefixlen": "127"}, "Invalid IPv6 prefix provided (IPv6 prefix length must be "
                                "between 0 and 126)"),
    ({"ipv6-prefixlen": "abc"}, "Parameter 'ipv6-prefixlen' expects an int64 value"),
    ({"ipv6-net": "fec0::/x"}, "Parameter 'ipv6-prefixlen' expects a number"),
    ({"ipv6-host": "fec1::2"}, "IPv6 Host doesn't belong to network"),
    ({"ipv6-host": "x"}, "Failed to parse IPv6 host"),
    ({"ipv6-dns": "x"}, "Failed to parse IPv6 DNS"),
    ({"ipv6-dns": "fec1::3", "restrict": "on"}, "IPv6 DNS doesn't belong to network"),
    ({"domainname": ""}, "'domainname' parameter cannot be empty"),
    ({"domainname": "d" * 256}, "'domainname' parameter cannot exceed 255 bytes"),
    ({"hostname": "h" * 256}, "'vhostname' parameter cannot exceed 255 bytes"),
    ({"tftp-server-name": "t" * 256}, "'tftp-server-name' parameter cannot exceed 255 bytes"),
    ({"smb": "/nonexistent-dir"}, "Could not find '/usr/sbin/smbd', please install it"),
])
def test_option_errors_as_qemu(props: dict[str, str], message: str) -> None:
    if "smb" in props and os.path.exists("/usr/sbin/smbd"):
        pytest.skip("smbd is installed here")
    with pytest.raises(ConfigError) as info:
        new_netdev("n0", props)
    assert str(info.value) == message


def test_defaults_are_qemus() -> None:
    config = parse_options({}).slirp
    assert [socket.inet_ntoa(a) for a in (config.vnetwork, config.vnetmask, config.vhost,
                                          config.vdhcp_start, config.vnameserver)] == \
        ["10.0.2.0", "255.255.255.0", "10.0.2.2", "10.0.2.15", "10.0.2.3"]
    assert [socket.inet_ntop(socket.AF_INET6, a) for a in (config.vprefix_addr6, config.vhost6,
                                                          config.vnameserver6)] == \
        ["fec0::", "fec0::2", "fec0::3"]
    assert (config.vprefix_len, config.restricted, config.in_enabled, config.in6_enabled) == \
        (64, False, True, True)


@pytest.mark.parametrize(("props", "net", "mask", "host"), [
    ({"net": "10.5.0.0/16"}, "10.5.0.0", "255.255.0.0", "10.5.2.2"),
    ({"net": "172.20.1.0"}, "172.16.0.0", "255.240.0.0", "172.16.2.2"),
    ({"net": "192.168.1.7/255.255.255.0"}, "192.168.1.0", "255.255.255.0", "192.168.1.2"),
    ({"ip": "10.9.9.0"}, "10.9.9.0", "255.255.255.0", "10.9.9.2"),
])
def test_net_as_qemu_derives_it(props: dict[str, str], net: str, mask: str, host: str) -> None:
    config = parse_options(props).slirp
    assert (socket.inet_ntoa(config.vnetwork), socket.inet_ntoa(config.vnetmask),
            socket.inet_ntoa(config.vhost)) == (net, mask, host)


def test_ipv6_net_sets_prefix_and_length() -> None:
    config = parse_options({"ipv6-net": "fd00:1::/48"}).slirp
    assert (socket.inet_ntop(socket.AF_INET6, config.vprefix_addr6), config.vprefix_len,
            socket.inet_ntop(socket.AF_INET6, config.vhost6)) == ("fd00:1::", 48, "fd00:1::2")


def test_info_network_text(make_netdev) -> None:
    netdev, _ = make_netdev(restrict="on")
    assert netdev.info() == "type=user,net=10.0.2.0,restrict=on"
    for net, text in (("10.1.2.3/16", "10.1.0.0"), ("10.0.3", "10.0.0.0")):
        other = new_netdev("x", {"net": net})
        assert other.info() == f"type=user,net={text},restrict=off"
        other.close()


def test_missing_libslirp_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slirp_wrapper, "_libs", None)
    monkeypatch.setattr(slirp_wrapper, "SLIRP_LIBRARY", "libslirp-not-here.so.0")
    with pytest.raises(ConfigError) as info:
        new_netdev("n0", {})
    assert (info.value.option, str(info.value)) == \
        ("-netdev user", "libslirp is not installed (Debian package libslirp0)")


def test_missing_libslirp_on_the_command_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(slirp_wrapper, "_libs", None)
    monkeypatch.setattr(slirp_wrapper, "SLIRP_LIBRARY", "libslirp-not-here.so.0")
    status = cli.main(["-M", "virt", "-bios", "none", "-accel", "tcg", "-S", "-display",
                       "none", "-nodefaults", "-netdev", "user,id=n0,hostfwd=tcp::0-:22"])
    assert status == 1
    assert capsys.readouterr().err.splitlines()[-1] == \
        "kvmpy: -netdev user: libslirp is not installed (Debian package libslirp0)"


def test_smb_sets_up_a_private_smbd(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    smbd = tmp_path / "smbd"
    smbd.write_text("#!/bin/sh\n")
    monkeypatch.setattr("kvmpy.net.user.SMBD_COMMAND", str(smbd))
    netdev = new_netdev("n0", {"smb": str(tmp_path), "restrict": "on"})
    try:
        smb_dir = netdev._smb_dir
        assert smb_dir is not None and os.path.basename(smb_dir).startswith("qemu-smb.")
        with open(os.path.join(smb_dir, "smb.conf")) as conf_file:
            conf = conf_file.read()
        assert f"[qemu]\npath={tmp_path}\nread only=no\nguest ok=yes\n" in conf
    finally:
        netdev.close()
    assert not os.path.exists(smb_dir)


# -- HMP --------------------------------------------------------------------------------------


def test_hmp_hostfwd_add_and_remove(make_netdev) -> None:
    netdev, _ = make_netdev(restrict="on")
    netdevs = {"net0": netdev}
    assert hmp_hostfwd_add(netdevs, "tcp:127.0.0.1:0-:80") == ""
    assert hmp_hostfwd_add(netdevs, "net0", "udp:127.0.0.1:0-:53") == ""
    rules = usernet_ports(hmp_info_usernet(netdevs))
    assert [(proto, guest) for proto, _, guest in rules] == [("TCP", 80), ("UDP", 53)]
    port = rules[0][1]
    assert hmp_hostfwd_remove(netdevs, f"tcp:127.0.0.1:{port}") == \
        f"host forwarding rule for tcp:127.0.0.1:{port} removed"
    assert hmp_hostfwd_remove(netdevs, "net0", f"tcp:127.0.0.1:{port}") == \
        f"host forwarding rule for tcp:127.0.0.1:{port} not found"
    assert [guest for _, _, guest in usernet_ports(hmp_info_usernet(netdevs))] == [53]


def test_hmp_hostfwd_messages(make_netdev) -> None:
    netdev, _ = make_netdev(restrict="on")
    netdevs = {"net0": netdev, "tap0": object()}
    assert hmp_hostfwd_add({}, "tcp::0-:1") == "user mode network stack not in use"
    assert hmp_hostfwd_add(netdevs, "n9", "tcp::0-:1") == "unrecognized netdev id 'n9'"
    assert hmp_hostfwd_add(netdevs, "tap0", "tcp::0-:1") == "invalid device specified"
    assert hmp_hostfwd_add(netdevs, "foo") == "Invalid host forwarding rule 'foo' " \
                                              "(No : separators)"
    assert hmp_hostfwd_remove(netdevs, "bad") == "invalid format"
    assert hmp_hostfwd_remove(netdevs, "tcp::1-") == "invalid format"
    assert hmp_hostfwd_remove(netdevs, "udp:127.0.0.1:x") == "invalid format"
    assert hmp_hostfwd_remove(netdevs, "tcp::") == "invalid format"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        rule = f"tcp:127.0.0.1:{taken.getsockname()[1]}-:22"
        assert hmp_hostfwd_add(netdevs, rule) == \
            f"Could not set up host forwarding rule '{rule}'"


def test_hmp_commands_through_the_monitor(make_netdev) -> None:
    netdev, _ = make_netdev(restrict="on")
    system = SimpleNamespace(netdevs={"net0": netdev})
    assert hmp.run_command(system, "hostfwd_add net0 tcp:127.0.0.1:0-:2222") == ""  # type: ignore
    out = hmp.run_command(system, "info usernet")  # type: ignore[arg-type]
    assert out.startswith("Hub -1 (net0):\n  Protocol[State]")
    port = usernet_ports(out)[0][1]
    assert hmp.run_command(system, f"hostfwd_remove tcp:127.0.0.1:{port}") == \
        f"host forwarding rule for tcp:127.0.0.1:{port} removed\n"  # type: ignore[arg-type]
    assert hmp.run_command(system, "hostfwd_add") == \
        'hostfwd_add: string expected\nTry "help hostfwd_add" for more information\n'  # type: ignore
    assert hmp.run_command(system, "hostfwd_add a b c") == (  # type: ignore[arg-type]
        'hostfwd_add: extraneous characters at the end of line\n'
        'Try "help hostfwd_add" for more information\n')
    assert hmp.run_command(SimpleNamespace(netdevs={}), "info usernet") == ""  # type: ignore[arg-type]
    assert "hostfwd_add [netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport -- " \
           "redirect TCP or UDP connections from host to guest (requires -net user)" in \
        hmp.run_command(system, "help hostfwd_add")  # type: ignore[arg-type]
    assert "info usernet  -- show user network stack connection states" in \
        hmp.run_command(system, "help info")  # type: ignore[arg-type]


# -- resources --------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_releases_every_socket(main_loop: MainLoop) -> None:
    before = open_fds()
    watched = set(main_loop.loop._selector.get_map())  # type: ignore[attr-defined]
    netdev = new_netdev("n0", {"restrict": "on",
                               "hostfwd": ["tcp:127.0.0.1:0-:22", "udp:127.0.0.1:0-:53"]})
    nic = FakeNic(netdev)
    netdev.start(main_loop)
    arp_host(main_loop, nic)
    assert open_fds() > before
    netdev.close()
    netdev.close()
    assert open_fds() == before
    assert set(main_loop.loop._selector.get_map()) == watched  # type: ignore[attr-defined]


def test_frames_after_close_are_ignored(main_loop: MainLoop) -> None:
    netdev = new_netdev("n0", {"restrict": "on"})
    nic = FakeNic(netdev)
    netdev.start(main_loop)
    netdev.close()
    netdev.transmit(P.arp_request(P.GUEST_IP, P.HOST_IP))
    main_loop.run_for(0.05)
    assert nic.frames == []


def test_malformed_frames_do_not_hurt(make_netdev, main_loop: MainLoop) -> None:
    _, nic = make_netdev(restrict="on")
    for frame in (b"", b"\x00", bytes(13), bytes(14), P.BROADCAST + bytes(6) + b"\x08\x00" +
                  b"\x45" + bytes(3), P.BROADCAST + bytes(6) + b"\x08\x06" + bytes(5),
                  bytes(9000)):
        nic.netdev.transmit(frame)
    main_loop.run_for(0.05)
    assert arp_host(main_loop, nic).op == 2
