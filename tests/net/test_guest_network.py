"""Networking with a real guest: the bundled Linux on kvmpy's interpreter, with virtio-net on
user networking (libslirp), stream sockets between two VMs, and a tap device inside a
network namespace of the test's own.  Where QEMU 7.2 can run the same command line, it
does, and the guest must see the same.

Traffic goes to this machine only: the host is 10.0.2.2 (slirp's loopback), servers listen on
127.0.0.1, and no test resolves a name.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.process import ProcessVM
from kvmpy.registry_init import load_types

BOOT_TIMEOUT = 120.0
CMD_TIMEOUT = 60.0
QEMU = shutil.which("qemu-system-riscv64")
BOUND = r"kvmpy-guest: eth0 (\S+)(?: via (\S+))?\r?\n"
"""What the bundled guest prints when eth0 has its lease (no route: restrict=on)."""


def _skip_reason() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        if getattr(info.cls, "name", None) == "tcg":
            accel: Any = info.cls
            reason: str | None = accel.unavailable_reason()
            return None if reason is None else f"interpreter accelerator unavailable: {reason}"
    return "the tcg accelerator is not registered in this build"


@pytest.fixture
def guest() -> Iterator[Any]:
    """``guest(*args, vmm="kvmpy")`` -> a running bundled guest at its prompt."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    import kvmpy.guests as guests

    vms: list[ProcessVM] = []

    def start(*args: str, vmm: str = "kvmpy") -> ProcessVM:
        binary = None
        extra = ["-accel", "tcg"]
        if vmm == "qemu":
            if QEMU is None:
                pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
            binary, extra = [QEMU], []
        vm = ProcessVM(["-M", "virt", "-m", "256M", "-kernel", str(guests.kernel_path()),
                        "-initrd", str(guests.initrd_path()), "-append", "console=ttyS0",
                        *extra, *args], binary=binary)
        vms.append(vm)
        vm.launch()
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
        return vm

    yield start
    for vm in vms:
        if vm.is_running():
            vm.kill()


def sh(vm: ProcessVM, command: str, timeout: float = CMD_TIMEOUT) -> str:
    """``command``'s output, between markers the echoed command line cannot contain."""
    vm.console.send(f"echo @@$((6*7))@@; {command}; echo @@$((6*8))@@\n")
    match = vm.console.expect(r"(?s)@@42@@\r?\n(.*?)@@48@@", timeout=timeout)
    return str(match.group(1)).replace("\r", "")


def lease(vm: ProcessVM, timeout: float = CMD_TIMEOUT) -> re.Match[str]:
    """The bundled guest's line for eth0's DHCP lease, wherever it came in the console
    output (with several harts it may come before the prompt)."""
    deadline = time.monotonic() + timeout
    while (match := re.search(BOUND, vm.console.log)) is None:
        assert time.monotonic() < deadline, f"no DHCP lease:\n{vm.console.log[-2000:]}"
        time.sleep(0.1)
    return match


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    """A connection to a forwarded port once the guest listens behind it."""
    deadline = time.monotonic() + timeout
    while True:
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.settimeout(2)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            first = b"?"  # open, nothing sent yet
        if first:
            conn.settimeout(10)
            return conn
        conn.close()  # slirp accepted, the guest was not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens behind 127.0.0.1:{port}")
        time.sleep(0.2)


def nic(netdev: str, model: str = "virtio-net-pci") -> list[str]:
    extra = ",romfile=" if model.endswith("pci") else ""  # QEMU has no efi-virtio.rom here
    return ["-device", f"{model},netdev={netdev}{extra}"]


@pytest.mark.parametrize("vmm", ["kvmpy", "qemu"])
def test_dhcp_and_tcp_both_ways(guest: Any, vmm: str) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(100))
            conn.sendall(b"pong-from-host\n")

    threading.Thread(target=serve, daemon=True).start()
    hostport = free_port()
    vm = guest("-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{hostport}-:8080", *nic("n0"),
               vmm=vmm)
    match = lease(vm)
    assert match.groups() == ("10.0.2.15/24", "10.0.2.2")
    assert "default via 10.0.2.2 dev eth0" in sh(vm, "ip route")
    assert "nameserver 10.0.2.3" in sh(vm, "cat /etc/resolv.conf")
    # guest -> host: slirp's 10.0.2.2 is the host's loopback
    assert sh(vm, f"echo ping-from-guest | nc 10.0.2.2 {port}") == "pong-from-host\n"
    assert received == [b"ping-from-guest\n"]
    # host -> guest through hostfwd
    vm.console.send("(echo hello-from-guest | nc -l -p 8080) &\n")
    with connect(hostport) as conn:
        assert conn.recv(100) == b"hello-from-guest\n"
    server.close()


def test_udp_hostfwd_and_hostfwd_add_at_run_time(guest: Any) -> None:
    udp_port, tcp_port = free_port(socket.SOCK_DGRAM), free_port()
    vm = guest("-netdev", f"user,id=n0,restrict=on,hostfwd=udp:127.0.0.1:{udp_port}-:9000",
               *nic("n0"))
    lease(vm)
    sh(vm, "(nc -u -l -p 9000 > /tmp/udp.txt &)")
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        # Until nc listens, a datagram finds no socket in the guest: send until one lands.
        while "datagram-to-guest" not in sh(vm, "cat /tmp/udp.txt"):
            assert time.monotonic() < deadline, "the datagram did not arrive"
            udp.sendto(b"datagram-to-guest\n", ("127.0.0.1", udp_port))
            time.sleep(0.5)
    assert vm.hmp(f"hostfwd_add n0 tcp:127.0.0.1:{tcp_port}-:7000") == ""
    assert re.search(rf"TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+{tcp_port}\s+"
                     r"10\.0\.2\.15\s+7000\s", vm.hmp("info usernet"))
    vm.console.send("(echo added-at-run-time | nc -l -p 7000) &\n")
    with connect(tcp_port) as conn:
        assert conn.recv(100) == b"added-at-run-time\n"
    assert vm.hmp(f"hostfwd_remove n0 tcp:127.0.0.1:{tcp_port}").startswith("host forwarding")


def test_two_nics_on_two_netdevs(guest: Any) -> None:
    vm = guest("-netdev", "user,id=a,restrict=on", *nic("a"),
               "-netdev", "user,id=b,restrict=on,net=10.0.3.0/24", *nic("b"))
    lease(vm)
    links = sh(vm, "ip -o link show | grep -o 'link/ether [0-9a-f:]*'")
    assert links.split() == ["link/ether", "52:54:00:12:34:56", "link/ether",
                             "52:54:00:12:34:57"]
    sh(vm, "udhcpc -i eth1 -n -q >/dev/null 2>&1")
    assert "inet 10.0.3.15/24" in sh(vm, "ip addr show eth1")
    assert vm.hmp("info network").splitlines()[:2] == [
        "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56",
        " \\ a: index=0,type=user,net=10.0.2.0,restrict=on"]


def test_link_down_is_seen_by_the_guest(guest: Any) -> None:
    vm = guest("-netdev", "user,id=n0,restrict=on", *nic("n0"))
    lease(vm)
    assert sh(vm, "cat /sys/class/net/eth0/carrier") == "1\n"
    assert vm.hmp("set_link n0 off") == ""
    deadline = time.monotonic() + 30
    while sh(vm, "cat /sys/class/net/eth0/carrier") != "0\n":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    vm.hmp("set_link n0 on")
    while sh(vm, "cat /sys/class/net/eth0/carrier") != "1\n":
        assert time.monotonic() < deadline + 30
        time.sleep(0.3)


def test_stream_between_two_vms(guest: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "wire.sock")
    a = guest("-netdev", f"stream,id=w,server=on,addr.type=unix,addr.path={path}", *nic("w"))
    b = guest("-netdev", f"stream,id=w,addr.type=unix,addr.path={path}", *nic("w"))
    for vm, ip in ((a, "192.168.7.1"), (b, "192.168.7.2")):
        sh(vm, f"ip link set eth0 up; ip addr add {ip}/24 dev eth0")
    sh(a, "(nc -l -p 6000 > /tmp/wire.txt &)")
    deadline = time.monotonic() + 30
    while "over-the-wire" not in sh(a, "cat /tmp/wire.txt"):
        assert time.monotonic() < deadline, "nothing came over the wire"
        sh(b, "echo over-the-wire | nc 192.168.7.1 6000")
    assert " 0% packet loss" in sh(b, "ping -c 3 -W 5 192.168.7.1")


def test_tap_in_a_network_namespace(guest: Any, tmp_path: Path) -> None:
    """kvmpy in a namespace of its own, its tap there too: the namespace side reaches the
    guest and the guest the namespace side; the host's interfaces are never touched."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None or \
            shutil.which("ip") is None:
        pytest.skip("needs unshare, nsenter (util-linux) and ip (iproute2)")
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    import kvmpy.guests as guests

    vm = ProcessVM(["-M", "virt", "-m", "256M", "-accel", "tcg",
                    "-kernel", str(guests.kernel_path()), "-initrd", str(guests.initrd_path()),
                    "-append", "console=ttyS0",
                    "-netdev", "tap,id=t0,ifname=kvmpytap0,script=no,downscript=no",
                    *nic("t0")],
                   binary=["unshare", "-n", "--", sys.executable, "-m", "kvmpy"])
    try:
        vm.launch()
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
        pid = vm.get_pid()
        assert pid is not None

        def ns(*command: str) -> str:
            return subprocess.run(["nsenter", "-t", str(pid), "-n", *command], check=True,
                                  capture_output=True, text=True, timeout=30).stdout

        ns("ip", "addr", "add", "192.168.77.1/24", "dev", "kvmpytap0")
        ns("ip", "link", "set", "kvmpytap0", "up")
        sh(vm, "ip link set eth0 up; ip addr add 192.168.77.2/24 dev eth0")
        assert " 0% packet loss" in sh(vm, "ping -c 3 -W 5 192.168.77.1")
        sh(vm, "(echo from-the-guest | nc -l -p 5000 &)")
        fetch = ("import socket,time\n"
                 "for _ in range(60):\n"
                 "    try:\n"
                 "        s = socket.create_connection(('192.168.77.2', 5000), timeout=5)\n"
                 "        break\n"
                 "    except OSError:\n"
                 "        time.sleep(0.5)\n"
                 "print(s.recv(100).decode(), end='')\n")
        assert ns(sys.executable, "-c", fetch) == "from-the-guest\n"
    finally:
        if vm.is_running():
            vm.kill()
    assert "kvmpytap0" not in subprocess.run(["ip", "link"], capture_output=True,
                                             text=True, check=True).stdout
