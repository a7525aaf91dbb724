"""``-netdev tap`` against a real tap device, inside a network namespace of the test's own
(``unshare -n``), so that nothing is created in the host's namespace: frames written by a
packet socket on the interface reach the NIC, frames the NIC sends reach the socket, and a
NIC without room holds the back-end's reads without losing frames."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from kvmpy.config import VMConfig
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.net import options
from kvmpy.net.tap import TapNetdev

IN_NAMESPACE = textwrap.dedent('''
    import asyncio, socket, subprocess, sys, threading
    from kvmpy.net.tap import TapNetdev

    VNET = {"off": {"vnet_hdr": "off"}, "default": {}}[sys.argv[1]]
    HDR = 0 if VNET else 12  # with the kernel's IFF_VNET_HDR, a header in front both ways

    class Nic:
        def __init__(self):
            self.frames, self.room, self.headers = [], True, set()
        def receive(self, frame):
            if not self.room:
                return False
            self.headers.add(frame[:HDR])
            frame = frame[HDR:]
            if frame[12:14] == b"\\x88\\xb5":  # the test's frames (not the kernel's IPv6 ND)
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

    async def main():
        loop = asyncio.get_running_loop()
        tap = TapNetdev("t0", {"ifname": "kvmpytap0", "script": "no", "downscript": "no",
                               **VNET})
        assert tap.vnet_hdr_len == HDR
        nic = Nic()
        tap.attach(nic, "nic0")
        tap.start(System(loop))
        assert tap.info() == "type=tap,ifname=kvmpytap0,script=no,downscript=no", tap.info()
        subprocess.run(["ip", "link", "set", "kvmpytap0", "up"], check=True)
        peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        peer.bind(("kvmpytap0", 0x88B5))
        peer.settimeout(5)
        frame = lambda n: bytes(6 * [0xFF]) + bytes.fromhex("020000000001") + b"\\x88\\xb5" + \\
            bytes([n]) * 60
        # host -> NIC
        peer.send(frame(1))
        for _ in range(100):
            if nic.frames:
                break
            await asyncio.sleep(0.02)
        assert nic.frames == [frame(1)], nic.frames
        # NIC -> host
        tap.transmit(bytes(HDR) + frame(2))
        await asyncio.sleep(0.1)
        got = await loop.run_in_executor(None, peer.recv, 2048)
        assert got == frame(2), got
        # a full NIC: the back-end holds what it read and reads no further
        nic.room = False
        for n in range(3, 8):
            peer.send(frame(n))
        await asyncio.sleep(0.3)
        assert nic.frames == [frame(1)]
        nic.room = True
        tap.nic_ready()
        for _ in range(100):
            if len(nic.frames) == 6:
                break
            await asyncio.sleep(0.02)
        assert nic.frames == [frame(n) for n in (1, 3, 4, 5, 6, 7)], len(nic.frames)
        assert nic.headers == {bytes(HDR)}, nic.headers  # no offloads were asked for
        tap.close()
        print("TAP-OK")

    asyncio.run(main())
''')


def _unshare() -> str:
    path = shutil.which("unshare")
    if path is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2) for a namespace of its own")
    return path


@pytest.mark.parametrize("vnet_hdr", ["off", "default"])
def test_frames_cross_a_real_tap_device(vnet_hdr: str) -> None:
    """``vnet_hdr=off``: plain frames; by default (the kernel has IFF_VNET_HDR) each frame
    has a 12-byte virtio-net header in front, both ways."""
    unshare = _unshare()
    proc = subprocess.run([unshare, "-n", sys.executable, "-c", IN_NAMESPACE, vnet_hdr],
                          capture_output=True, text=True, timeout=60, check=False)
    if "Operation not permitted" in proc.stderr and "unshare" in proc.stderr:
        pytest.skip(f"cannot create a network namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "TAP-OK" in proc.stdout


def test_unusable_names_and_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="longer than 15 bytes"):
        TapNetdev("t0", {"ifname": "x" * 16, "script": "no"})
    with pytest.raises(ConfigError, match="Invalid parameter 'foo'"):
        TapNetdev("t0", {"foo": "1"})
    with pytest.raises(ConfigError, match="Parameter 'vnet_hdr' expects 'on' or 'off'"):
        TapNetdev("t0", {"vnet_hdr": "1"})
    with pytest.raises(ConfigError, match="vnet_hdr=, helper=, queues=, fds=, and vhostfds= "
                       "are invalid with fd="):
        TapNetdev("t0", {"fd": "0", "vnet_hdr": "off"})
    with pytest.raises(NotBuiltError, match="vhost=on"):
        TapNetdev("t0", {"vhost": "on"})
    with pytest.raises(ConfigError, match="'99999' is not a valid file descriptor"):
        TapNetdev("t0", {"fd": "99999"})


@pytest.mark.parametrize(("argv", "message"), [
    (["-netdev", "tap"], "Parameter 'id' is missing"),
    (["-netdev", "foo,id=x"], "Parameter 'type' does not accept value 'foo'"),
    (["-netdev", "id=x"], "Parameter 'type' is missing"),
    (["-netdev", "tap,id=1n"], "Parameter 'id' expects an identifier"),
    (["-nic", "foo"], "Parameter 'type' does not accept value 'foo'"),
    (["-net", "foo"], "Parameter 'type' does not accept value 'foo'"),
])
def test_option_errors_are_qemus(argv: list[str], message: str) -> None:
    config = VMConfig()
    adder = {"-netdev": options.add_netdev, "-nic": options.add_nic, "-net": options.add_net}
    with pytest.raises(ConfigError, match=message):
        adder[argv[0]](config, argv[1], " ".join(argv))


def test_nic_and_legacy_net_make_a_backend_and_its_nic() -> None:
    config = VMConfig()
    options.add_nic(config, "tap,ifname=t9,script=no,mac=52:54:00:00:00:09", "-nic ...")
    options.add_net(config, "nic,model=virtio-net-pci", "-net nic")
    options.add_net(config, "tap,ifname=t8,script=no", "-net tap")
    assert options.add_nic(config, "none", "-nic none") is None
    options.finish(config)
    assert [(s.driver, s.props["id"]) for s in config.netdevs] == \
        [("tap", "__org.qemu.nic0"), ("tap", "hub0port0")]
    assert [(d.driver, d.props) for d in config.devices] == [
        ("virtio-net-pci", {"netdev": "__org.qemu.nic0", "mac": "52:54:00:00:00:09"}),
        ("virtio-net-pci", {"netdev": "hub0port0"})]
    assert "tap" in options.netdev_help().splitlines()
