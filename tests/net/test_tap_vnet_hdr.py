"""A tap with IFF_VNET_HDR passed as ``-netdev tap,fd=N`` (what libvirt does): each frame carries
a virtio-net header both ways, the kernel is told which offloads the guest takes, and a frame
the kernel sends asking for a checksum the guest does not compute gets one.  Tap devices exist
only inside a network namespace of the test's own (``unshare -n``)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from kvmpy.net import vnet_hdr
from kvmpy.net.vnet_hdr import check_received, tun_offloads
from kvmpy.process import ProcessVM

from .test_guest_network import BOOT_TIMEOUT, _skip_reason, nic, sh

OPEN_TAP = textwrap.dedent('''
    import fcntl, os, struct
    def open_tap(name, flags=0x0002 | 0x1000 | 0x4000):  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), flags))
        return fd
''')

BACKEND_IN_NAMESPACE = OPEN_TAP + textwrap.dedent('''
    import asyncio, socket, subprocess, threading
    from kvmpy.net.tap import TapNetdev

    class Nic:
        def __init__(self):
            self.frames, self.room = [], True
        def receive(self, frame):
            if not self.room:
                return False
            if frame[12 + 12:12 + 14] in (b"\\x88\\xb5", b"\\x08\\x00"):  # not IPv6 ND
                self.frames.append(frame)
            return True

    class System:
        def __init__(self, loop):
            self.loop, self.lock = loop, threading.RLock()
        def add_reader(self, fd, cb):
            self.loop.add_reader(fd, cb)
        def remove_reader(self, fd):
            self.loop.remove_reader(fd)
        def call_soon(self, fn):
            self.loop.call_soon_threadsafe(fn)

    def ones(data):
        data += b"\\0" * (len(data) % 2)
        total = sum(struct.unpack(f">{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    def udp_checksum_ok(eth):
        ip = eth[14:]
        ihl = (ip[0] & 0xF) * 4
        udp = ip[ihl:struct.unpack(">H", ip[2:4])[0]]
        pseudo = ip[12:20] + struct.pack(">HH", 17, len(udp))
        return ones(pseudo + udp) == 0xFFFF

    async def until(cond):
        for _ in range(250):
            if cond():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("timed out")

    async def main():
        loop = asyncio.get_running_loop()
        fd = open_tap("kvmpytap1")
        tap = TapNetdev("t0", {"fd": str(fd)})
        assert tap.vnet_hdr_len == 12, tap.vnet_hdr_len
        assert tap.info() == f"type=tap,fd={fd}", tap.info()
        nic = Nic()
        tap.attach(nic, "nic0")
        tap.start(System(loop))
        subprocess.run(["ip", "link", "set", "kvmpytap1", "up"], check=True)
        subprocess.run(["ip", "addr", "add", "10.9.9.1/24", "dev", "kvmpytap1"], check=True)
        subprocess.run(["ip", "neigh", "add", "10.9.9.2", "lladdr", "02:00:00:00:00:02",
                        "dev", "kvmpytap1", "nud", "permanent"], check=True)
        peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        peer.bind(("kvmpytap1", 0x88B5))
        peer.settimeout(5)
        frame = lambda n: bytes(6 * [0xFF]) + bytes.fromhex("020000000002") + b"\\x88\\xb5" + \\
            bytes([n]) * 60
        # host -> NIC: the frame behind an empty 12-byte header
        peer.send(frame(1))
        await until(lambda: nic.frames)
        assert nic.frames == [bytes(12) + frame(1)], nic.frames
        # NIC -> host: the header goes, the frame arrives as sent
        tap.transmit(bytes(12) + frame(2))
        got = await loop.run_in_executor(None, peer.recv, 2048)
        assert got == frame(2), got
        # a header the kernel refuses (GSO type 0x42) is the guest's error: nothing breaks
        tap.transmit(bytes([0, 0x42]) + bytes(10) + frame(3))
        tap.transmit(bytes(12) + frame(4))
        got = await loop.run_in_executor(None, peer.recv, 2048)
        assert got == frame(4), got

        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # the guest takes checksum offload: the kernel leaves the checksum to it
        tap.set_offload(1 << 1)  # VIRTIO_NET_F_GUEST_CSUM
        udp.sendto(b"partial" * 20, ("10.9.9.2", 9))
        await until(lambda: len(nic.frames) == 2)
        header = nic.frames[1][:12]
        assert header[0] & 1, header.hex()  # NEEDS_CSUM, for the guest to finish
        # frames the kernel queued before the guest turned the offload off: done here
        nic.room = False
        peer.send(frame(5))  # read, and held for the NIC
        await asyncio.sleep(0.2)
        udp.sendto(b"queued" * 20, ("10.9.9.2", 9))  # stays in the kernel, NEEDS_CSUM
        await asyncio.sleep(0.2)
        tap.set_offload(0)
        nic.room = True
        tap.nic_ready()
        await until(lambda: len(nic.frames) == 4)
        assert nic.frames[2] == bytes(12) + frame(5)
        last = nic.frames[3]
        assert last[:12] == bytes(12), last[:12].hex()
        assert last.endswith(b"queued" * 20) and udp_checksum_ok(last[12:]), last.hex()
        # with the offload off from the start, the kernel computes it
        udp.sendto(b"plain" * 20, ("10.9.9.2", 9))
        await until(lambda: len(nic.frames) == 5)
        assert nic.frames[4][:12] == bytes(12) and udp_checksum_ok(nic.frames[4][12:])
        tap.close()
        print("VNET-OK")

    asyncio.run(main())
''')


def _unshare() -> str:
    path = shutil.which("unshare")
    if path is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2) for a namespace of its own")
    return path


def _in_namespace(script: str, marker: str) -> None:
    proc = subprocess.run([_unshare(), "-n", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    if "Operation not permitted" in proc.stderr and "unshare" in proc.stderr:
        pytest.skip(f"cannot create a network namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout


def test_fd_with_vnet_hdr_carries_frames_both_ways() -> None:
    _in_namespace(BACKEND_IN_NAMESPACE, "VNET-OK")


def test_fd_without_vnet_hdr_is_plain_frames() -> None:
    script = OPEN_TAP + textwrap.dedent('''
        from kvmpy.net.tap import TapNetdev
        tap = TapNetdev("t0", {"fd": str(open_tap("kvmpytap2", 0x0002 | 0x1000))})
        assert tap.vnet_hdr_len == 0, tap.vnet_hdr_len
        tap.close()
        print("PLAIN-OK")
    ''')
    _in_namespace(script, "PLAIN-OK")


# -- the header checks, on frames built here ------------------------------------------------


def _ones(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = int(sum(struct.unpack(f">{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _udp_frame(payload: bytes, partial: bool) -> tuple[bytes, int]:
    """An IPv4/UDP frame and the UDP checksum's offset in it; with ``partial`` the checksum
    field holds just the pseudo-header's sum, as the kernel leaves it for NEEDS_CSUM."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    udp = struct.pack(">HHHH", 1234, 9, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack(">H", ~_ones(ip) & 0xFFFF) + ip[12:]
    pseudo = src + dst + struct.pack(">HH", 17, len(udp))
    check = _ones(pseudo) if partial else ~_ones(pseudo + udp) & 0xFFFF
    udp = udp[:6] + struct.pack(">H", check) + udp[8:]
    return bytes(12) + bytes.fromhex("020000000001020000000002") + b"\x08\x00" + ip + udp, 40


@pytest.mark.parametrize("size", [1, 2, 101, 1400])
def test_needs_csum_without_the_offload_is_computed(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    whole, field = _udp_frame(payload[:size], partial=False)
    partial, _ = _udp_frame(payload[:size], partial=True)
    header = struct.pack("=BBHHHH", vnet_hdr.F_NEEDS_CSUM, 0, 0, 0, 34, 6)
    frame = header + bytes(2) + partial[12:]
    fixed, why = check_received(frame, 12, 0)
    assert why == "" and fixed is not None
    assert fixed[12 + field:12 + field + 2] == whole[12 + field:12 + field + 2]
    assert fixed == bytes(12) + whole[12:]
    # a guest with the checksum offload finishes it itself: the frame goes as it is
    assert check_received(frame, 12, vnet_hdr.TUN_F_CSUM) == (frame, "")


def test_headers_the_guest_cannot_take() -> None:
    plain, _ = _udp_frame(b"x" * 20, partial=False)
    gso = bytes([vnet_hdr.F_NEEDS_CSUM, vnet_hdr.GSO_TCPV4]) + plain[2:]
    assert check_received(gso, 12, 0)[0] is None
    assert check_received(gso, 12, vnet_hdr.TUN_F_CSUM)[0] is None
    tso = vnet_hdr.TUN_F_CSUM | vnet_hdr.TUN_F_TSO4
    assert check_received(gso, 12, tso) == (gso, "")
    ecn = bytes([0, vnet_hdr.GSO_TCPV4 | vnet_hdr.GSO_ECN]) + plain[2:]
    assert check_received(ecn, 12, tso)[0] is None
    assert check_received(bytes([0, 5]) + plain[2:], 12, 0x7F)[0] is None  # UDP_L4: never
    assert check_received(plain[:11], 12, 0) == (None, "11 bytes, shorter than the 12-byte "
                                                       "vnet header")
    outside = struct.pack("=BBHHHH", vnet_hdr.F_NEEDS_CSUM, 0, 0, 0, 60, 6) + plain[10:]
    assert check_received(outside, 12, 0)[0] is None
    valid = bytes([vnet_hdr.F_DATA_VALID]) + plain[1:]
    assert check_received(valid, 12, 0) == (plain, "")
    assert check_received(valid, 12, vnet_hdr.TUN_F_CSUM) == (valid, "")


def test_tun_offloads_are_qemus() -> None:
    csum, tso4, tso6, ecn, ufo = (1 << bit for bit in (1, 7, 8, 9, 10))
    assert tun_offloads(0) == 0
    assert tun_offloads(tso4 | tso6 | ecn | ufo) == 0  # nothing without the checksum
    assert tun_offloads(csum) == vnet_hdr.TUN_F_CSUM
    assert tun_offloads(csum | ecn) == vnet_hdr.TUN_F_CSUM
    assert tun_offloads(csum | tso4 | tso6 | ecn | ufo) == 0x1F
    assert tun_offloads(csum | tso6 | ufo, has_ufo=False) == 0x05


LAUNCHER = OPEN_TAP + textwrap.dedent('''
    import sys
    fd = open_tap("kvmpytap3")
    os.set_inheritable(fd, True)
    args = [arg.replace("@TAPFD@", str(fd)) for arg in sys.argv[2:]]
    os.execv(sys.argv[1], [sys.argv[1], *args])
''')
"""Run inside the namespace: open the tap as libvirt does, then exec the VMM with its fd."""

QEMU = shutil.which("qemu-system-riscv64")


def _boot_on_a_vnet_fd(vmm: str) -> ProcessVM:
    if shutil.which("nsenter") is None:
        pytest.skip("needs nsenter (util-linux)")
    _unshare()
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    import kvmpy.guests as guests

    if vmm == "qemu":
        if QEMU is None:
            pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
        command, extra = [QEMU], []
    else:
        command, extra = [sys.executable, "-m", "kvmpy"], ["-accel", "tcg"]
    vm = ProcessVM(["-M", "virt", "-m", "256M", *extra,
                    "-kernel", str(guests.kernel_path()), "-initrd", str(guests.initrd_path()),
                    "-append", "console=ttyS0", "-netdev", "tap,id=t0,fd=@TAPFD@",
                    *nic("t0")],
                   binary=["unshare", "-n", "--", sys.executable, "-c", LAUNCHER,
                           command[0], *command[1:]])
    vm.launch()
    try:
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
    except BaseException:
        vm.kill()
        raise
    return vm


@pytest.mark.parametrize("vmm", ["kvmpy", "qemu"])
def test_guest_over_a_vnet_hdr_fd(vmm: str) -> None:
    """The bundled guest on virtio-net over ``-netdev tap,fd=N``, the tap opened with
    IFF_VNET_HDR as libvirt opens it: a ping from the guest, a connection to it, and a TCP
    stream from it (with the checksum and segmentation offloads the guest turns on).  QEMU
    runs the same as the oracle."""
    vm = _boot_on_a_vnet_fd(vmm)
    try:
        pid = vm.get_pid()
        assert pid is not None

        def ns(*command: str) -> str:
            return subprocess.run(["nsenter", "-t", str(pid), "-n", *command], check=True,
                                  capture_output=True, text=True, timeout=30).stdout

        ns("ip", "addr", "add", "192.168.78.1/24", "dev", "kvmpytap3")
        ns("ip", "link", "set", "kvmpytap3", "up")
        sh(vm, "ip link set eth0 up; ip addr add 192.168.78.2/24 dev eth0")
        assert " 0% packet loss" in sh(vm, "ping -c 3 -W 5 192.168.78.1")
        sh(vm, "(echo from-the-guest | nc -l -p 5000 &)")
        fetch = ("import socket,time\n"
                 "for _ in range(60):\n"
                 "    try:\n"
                 "        s = socket.create_connection(('192.168.78.2', 5000), timeout=5)\n"
                 "        break\n"
                 "    except OSError:\n"
                 "        time.sleep(0.5)\n"
                 "print(s.recv(100).decode(), end='')\n")
        assert ns(sys.executable, "-c", fetch) == "from-the-guest\n"
        serve = ("import socket\n"
                 "s = socket.create_server(('192.168.78.1', 5001)); s.settimeout(60)\n"
                 "c = s.accept()[0]; c.settimeout(60); data = b''\n"
                 "while (chunk := c.recv(65536)):\n"
                 "    data += chunk\n"
                 "print(len(data), data.count(b'kvmpy'))\n")
        server = subprocess.Popen(["nsenter", "-t", str(pid), "-n", sys.executable, "-c",
                                   serve], stdout=subprocess.PIPE, text=True)
        try:
            sh(vm, "sleep 1; yes kvmpy | head -c 300000 | nc 192.168.78.1 5001")
            out, _ = server.communicate(timeout=90)
        finally:
            if server.poll() is None:
                server.kill()
        assert out.split() == ["300000", "50000"], out
    finally:
        if vm.is_running():
            vm.kill()


def test_guest_sees_qemus_features_over_a_vnet_hdr_fd() -> None:
    """With a vnet-header tap the NIC offers what QEMU's does (the offloads and UFO as the
    kernel has it), and the guest turns on the same ones (its offload settings)."""
    seen = {}
    for vmm in ("kvmpy", "qemu"):
        vm = _boot_on_a_vnet_fd(vmm)
        try:
            seen[vmm] = sh(vm, "cat /sys/class/net/eth0/device/features").strip()
        finally:
            vm.kill()
    assert re.fullmatch("[01]{64}", seen["kvmpy"]), seen
    # Bits 0-23 are virtio-net's own (the rest, the transport's, are not the back-end's).
    assert seen["kvmpy"][:24] == seen["qemu"][:24], seen
    assert seen["kvmpy"][:2] == "11"  # CSUM and GUEST_CSUM: the header path is in use
