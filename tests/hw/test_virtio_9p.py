"""virtio-9p (QEMU 7.2's ``virtio-9p-device`` and ``virtio-9p-pci``): the transport around
kvmpy's 9P server.

Device level, on all four transports: identity, config space and features as QEMU's; 9P
round trips; requests served by the device's worker thread, not the notifying vCPU; a reset
while the server works drops that reply and resets the server; guest mistakes in QEMU's words.
Board level: the PCI function's configuration space and the command-line errors against
qemu-system-riscv64.  Guest level: tests/hw/guests/ninep_raw.elf drives the device by hand and
tries to leave the export (symbolic links, "..", names with '/', oversized counts, msize,
fids, a flush in flight, garbage); every attempt must fail and a canary outside the export
must stay as it was.
"""

from __future__ import annotations

import errno
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import kvmpy.hw.pci.virtio_pci  # noqa: F401  (registers the virtio-*-pci types)
from kvmpy.config import OptionSpec
from kvmpy.errors import ConfigError
from kvmpy.fs.fsdev import parse_fsdev
from kvmpy.fs.server import Server
from kvmpy.hw.virtio.ninep import MAX_MSIZE, VirtioNineP
from kvmpy.memory import GuestRAM

from ..support import kvmpy_env
from .riscv.conftest import QEMU, build_board, qemu_hmp, qemu_xp_words
from .virtio_drivers import TRANSPORTS, make_transport

RAM_BASE, RAM_SIZE = 0x80000000, 4 << 20
ECAM = 0x30000000
NOFID = 0xFFFFFFFF
RLERROR, RVERSION, RATTACH, RWALK, RLOPEN, RREAD, RFLUSH, RGETATTR = 7, 101, 105, 111, 13, 117, \
    109, 25
GUEST = Path(__file__).parent / "guests" / "ninep_raw.elf"


# -- 9P messages ---------------------------------------------------------------------------------

def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw)) + raw


def msg(kind: int, tag: int, body: bytes = b"") -> bytes:
    return struct.pack("<IBH", 7 + len(body), kind, tag) + body


def tversion(msize: int = 8192) -> bytes:
    return msg(100, 0xFFFF, struct.pack("<I", msize) + _s("9P2000.L"))


def tattach(fid: int = 0, tag: int = 1) -> bytes:
    return msg(104, tag, struct.pack("<II", fid, NOFID) + _s("") + _s("") + b"\0\0\0\0")


def twalk(fid: int, newfid: int, *names: str, tag: int = 2) -> bytes:
    return msg(110, tag, struct.pack("<IIH", fid, newfid, len(names))
               + b"".join(_s(n) for n in names))


def tlopen(fid: int, flags: int = 0, tag: int = 3) -> bytes:
    return msg(12, tag, struct.pack("<II", fid, flags))


def tread(fid: int, offset: int, count: int, tag: int = 4) -> bytes:
    return msg(116, tag, struct.pack("<IQI", fid, offset, count))


def tgetattr(fid: int, tag: int = 5) -> bytes:
    return msg(24, tag, struct.pack("<IQ", fid, 0x3FFF))


def tflush(oldtag: int, tag: int) -> bytes:
    return msg(108, tag, struct.pack("<H", oldtag))


def header(reply: bytes) -> tuple[int, int, int]:
    """(size, type, tag)."""
    size, kind, tag = struct.unpack_from("<IBH", reply)
    return int(size), int(kind), int(tag)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello from the host\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 1024)
    return root


@pytest.fixture
def ram() -> GuestRAM:
    return GuestRAM(RAM_BASE, RAM_SIZE)


def make_server(share: Path) -> Server:
    return Server(parse_fsdev(f"local,id=fs0,path={share},security_model=none"),
                  max_msize=MAX_MSIZE)


class GatedServer:
    """The real server behind a gate: a request waits in ``handle`` until the test opens it;
    records the thread each call ran on and the calls in order."""

    def __init__(self, server: Server, open_gate: bool = False) -> None:
        self.server = server
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.entered = threading.Event()
        self.calls: list[tuple[str, int]] = []
        self.threads: set[int] = set()

    def handle(self, request: bytes, reply_room: int) -> bytes:
        self.calls.append(("handle", len(request)))
        self.threads.add(threading.get_ident())
        self.entered.set()
        self.gate.wait(10)
        return self.server.handle(request, reply_room)

    def read_direct(self, request: bytes, room: int, into: Any) -> bytes | None:
        self.calls.append(("read_direct", len(request)))
        self.threads.add(threading.get_ident())
        self.entered.set()
        self.gate.wait(10)
        result = self.server.read_direct(request, room, into)
        self.calls.append(("read_direct done", 0))
        return result

    def reset(self) -> None:
        self.calls.append(("reset", 0))
        self.server.reset()

    def close(self) -> None:
        self.calls.append(("close", 0))
        self.server.close()


class Rig:
    """A device on a transport with a driver, and helpers for one request at a time."""

    def __init__(self, kind: str, ram: GuestRAM, server: Any, tag: str = "hostshare") -> None:
        self.ram = ram
        self.device = VirtioNineP(server=server, mount_tag=tag, fsdev="fs0")
        self.transport, self.driver, self.irq = make_transport(kind, ram, self.device)
        self.offered = self.driver.probe()
        self.next_buf = RAM_BASE + (1 << 20)

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        length = data if isinstance(data, int) else len(data)
        addr = self.next_buf
        self.next_buf += (length + 15) & ~15
        if self.next_buf > RAM_BASE + RAM_SIZE:
            addr, self.next_buf = RAM_BASE + (1 << 20), RAM_BASE + (1 << 20) + length
        if not isinstance(data, int):
            self.ram.write(addr, data)
        return addr, length

    def post(self, request: bytes, room: int = 8192, notify: bool = True) -> tuple[int, int]:
        out = self.buffer(request)
        into = self.buffer(room)
        self.driver.post([(out[0], out[1], False), (into[0], into[1], True)], notify=notify)
        return into

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            got += self.driver.new_used()
            if len(got) < count:
                assert time.monotonic() < deadline, f"{len(got)} of {count} replies came"
                time.sleep(0.002)
        return got

    def call(self, request: bytes, room: int = 8192) -> bytes:
        into = self.post(request, room)
        (_, length), = self.wait()
        return bytes(self.ram.read(into[0], length))

    def close(self) -> None:
        self.device.close()


@pytest.fixture
def rigs() -> Any:
    made: list[Rig] = []

    def make(kind: str, ram: GuestRAM, server: Any, tag: str = "hostshare") -> Rig:
        rig = Rig(kind, ram, server, tag)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


# -- device level --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TRANSPORTS)
def test_identity_config_space_and_features(kind: str, ram: GuestRAM, share: Path,
                                            rigs: Any) -> None:
    rig = rigs(kind, ram, make_server(share), tag="my_tag")
    assert rig.offered & 1, "VIRTIO_9P_MOUNT_TAG is offered"
    tag_len = rig.driver.config_read(0, 2)
    assert tag_len == 6
    assert bytes(rig.driver.config_read(2 + i, 1) for i in range(tag_len)) == b"my_tag"
    # Past the tag (no NUL is copied) the config space reads all ones, as QEMU's.
    assert rig.driver.config_read(2 + tag_len, 1) == 0xFF
    assert rig.device.device_id == 9 and rig.device.queue_sizes == (128,)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_file_read_through_the_queue(kind: str, ram: GuestRAM, share: Path,
                                       rigs: Any) -> None:
    rig = rigs(kind, ram, make_server(share))
    reply = rig.call(tversion(65536))
    assert header(reply)[1] == RVERSION
    assert struct.unpack_from("<I", reply, 7)[0] == 65536
    assert header(rig.call(tattach()))[1] == RATTACH
    assert header(rig.call(twalk(0, 1, "big.bin")))[1] == RWALK
    assert header(rig.call(tlopen(1)))[1] == RLOPEN
    data = b""
    while True:
        reply = rig.call(tread(1, len(data), 60000), room=65536)
        assert header(reply)[1] == RREAD
        count = struct.unpack_from("<I", reply, 7)[0]
        if not count:
            break
        data += reply[11:11 + count]
    assert data == (share / "big.bin").read_bytes()
    assert True in rig.irq.history  # the replies raised the interrupt


def test_requests_are_served_by_the_worker_not_the_notifier(ram: GuestRAM, share: Path,
                                                            rigs: Any) -> None:
    gated = GatedServer(make_server(share))
    rig = rigs("mmio-modern", ram, gated)
    rig.post(tversion())  # the notify returns while the server is still held at the gate
    assert gated.entered.wait(10)
    assert rig.driver.used_idx() == 0
    assert threading.get_ident() not in gated.threads
    gated.gate.set()
    (_, length), = rig.wait()
    assert length == 21
    assert rig.transport.state.isr & 1


def test_requests_are_answered_in_order_and_a_flush_after_its_request(
        ram: GuestRAM, share: Path, rigs: Any) -> None:
    rig = rigs("pci-modern", ram, make_server(share))
    rig.call(tversion())
    rig.call(tattach())
    rig.call(twalk(0, 1, "big.bin"))
    rig.call(tlopen(1))
    read_into = rig.post(tread(1, 0, 4096, tag=10), notify=False)
    flush_into = rig.post(tflush(10, tag=11))
    used = rig.wait(2)
    replies = [bytes(ram.read(addr, length))
               for (addr, _), (_, length) in zip((read_into, flush_into), used, strict=True)]
    assert [header(r)[1:] for r in replies] == [(RREAD, 10), (RFLUSH, 11)]


def test_reset_while_the_server_works_drops_the_reply(ram: GuestRAM, share: Path,
                                                      rigs: Any) -> None:
    gated = GatedServer(make_server(share), open_gate=True)
    rig = rigs("mmio-legacy", ram, gated)
    rig.call(tversion())
    rig.call(tattach())
    gated.gate.clear()
    gated.entered.clear()
    rig.post(tgetattr(0))
    assert gated.entered.wait(10)
    rig.driver.reset()  # the driver resets the device while the request is in the server
    gated.gate.set()
    time.sleep(0.2)
    assert rig.driver.used_idx() == 2  # the ring was reset: nothing more written into it
    rig.driver.probe()
    reply = rig.call(tversion())
    assert header(reply)[1] == RVERSION
    assert gated.calls[-2:] == [("reset", 0), ("handle", len(tversion()))]
    # The server forgot fid 0 with the reset.
    assert header(rig.call(tgetattr(0)))[1] == RLERROR


def test_a_reset_waits_for_a_read_into_guest_memory(ram: GuestRAM, share: Path,
                                                     rigs: Any) -> None:
    """A file's Tread goes straight into the guest's buffers, without the big lock; a reset
    returns only once that read is over (QEMU's reset drains requests in flight), so no
    data lands in buffers the driver has taken back."""
    gated = GatedServer(make_server(share), open_gate=True)
    rig = rigs("pci-modern", ram, gated)
    rig.call(tversion(65536))
    rig.call(tattach())
    rig.call(twalk(0, 1, "big.bin"))
    rig.call(tlopen(1))
    assert header(rig.call(tread(1, 0, 4096), room=8192))[1] == RREAD
    assert ("read_direct", 23) in gated.calls
    gated.gate.clear()
    gated.entered.clear()
    into = rig.post(tread(1, 0, 4096), room=8192)
    assert gated.entered.wait(10)
    resetter = threading.Thread(target=rig.driver.reset)
    resetter.start()
    resetter.join(0.3)
    assert resetter.is_alive()  # held until the read in flight is over
    gated.gate.set()
    resetter.join(10)
    assert not resetter.is_alive()
    assert ("read_direct done", 0) in gated.calls
    assert bytes(ram.read(into[0] + 11, 4096)) == (share / "big.bin").read_bytes()[:4096]
    assert rig.driver.used_idx() == 5  # the reset ring got no reply


def test_requests_are_read_up_to_the_largest_msize(ram: GuestRAM, share: Path,
                                                   rigs: Any) -> None:
    gated = GatedServer(make_server(share), open_gate=True)
    big = GuestRAM(RAM_BASE, 8 << 20)
    rig = rigs("mmio-modern", big, gated)
    rig.call(tversion(MAX_MSIZE))
    request = msg(118, 7, struct.pack("<IQI", 0, 0, 3 << 20) + bytes(3 << 20))
    addr = RAM_BASE + (4 << 20)
    big.write(addr, request)
    into = rig.buffer(64)
    rig.driver.post([(addr, len(request), False), (into[0], 64, True)])
    (_, length), = rig.wait()
    assert gated.calls[-1] == ("handle", MAX_MSIZE)
    assert header(bytes(big.read(into[0], length)))[1] == RLERROR


@pytest.mark.parametrize(("out_len", "room", "message"), [
    (11, 6, "The guest sent a VirtFS request without space for the reply"),
    (3, 64, "The guest sent a malformed VirtFS request: header size is 3, should be 7"),
    # The server answers a reply too large for the buffers with Rlerror(ENOBUFS); not even
    # that fits in 8 bytes.
    (None, 8, "VirtFS reply type 7 needs 11 bytes, buffer has 8"),
])
def test_guest_mistakes_stop_the_device_until_reset(ram: GuestRAM, share: Path, rigs: Any,
                                                    guest_errors: Any, out_len: int | None,
                                                    room: int, message: str) -> None:
    rig = rigs("mmio-modern", ram, make_server(share))
    rig.call(tversion())
    rig.call(tattach())
    request = tgetattr(0)
    out = rig.buffer(request)
    into = rig.buffer(room)
    rig.driver.post([(out[0], out_len or out[1], False), (into[0], room, True)])
    deadline = time.monotonic() + 10
    while not rig.transport.state.broken:
        assert time.monotonic() < deadline, "the device did not stop"
        time.sleep(0.005)
    assert any(message in m for m in guest_errors.messages), guest_errors.messages
    assert rig.driver.used_idx() == 2
    assert rig.driver.status() & 0x40  # modern: DEVICE_NEEDS_RESET
    rig.driver.probe()
    assert header(rig.call(tversion()))[1] == RVERSION


def test_a_reply_larger_than_its_buffers_is_refused(ram: GuestRAM, share: Path,
                                                   rigs: Any) -> None:
    rig = rigs("pci-modern", ram, make_server(share))
    rig.call(tversion())
    rig.call(tattach())
    reply = rig.call(tgetattr(0), room=20)  # Rgetattr takes 160 bytes
    assert header(reply)[1:] == (RLERROR, 5)
    assert struct.unpack_from("<I", reply, 7)[0] == errno.ENOBUFS
    assert header(rig.call(tgetattr(0)))[1] == RGETATTR  # and the device goes on


def test_a_malformed_chain_is_a_virtio_error(ram: GuestRAM, share: Path, rigs: Any,
                                             guest_errors: Any) -> None:
    rig = rigs("mmio-modern", ram, make_server(share))
    rig.driver.post([(RAM_BASE + RAM_SIZE - 4, 64, False), (RAM_BASE, 64, True)])
    deadline = time.monotonic() + 10
    while not rig.transport.state.broken:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert any("outside guest RAM" in m for m in guest_errors.messages)


def test_close_stops_the_worker_and_the_server(ram: GuestRAM, share: Path, rigs: Any) -> None:
    gated = GatedServer(make_server(share), open_gate=True)
    rig = rigs("pci-legacy", ram, gated)
    rig.call(tversion())
    worker = rig.device._worker
    assert worker is not None and worker.is_alive()
    rig.device.close()
    worker.join(5)
    assert not worker.is_alive()
    assert gated.calls[-1] == ("close", 0)
    rig.driver.post([(rig.buffer(tversion())[0], len(tversion()), False),
                     (rig.buffer(64)[0], 64, True)])
    time.sleep(0.1)
    assert rig.driver.used_idx() == 1  # closed: nothing more is served


# -- board level, against QEMU -------------------------------------------------------------------

def _board_with(share: Path, *devices: str) -> Any:
    specs = []
    for text in devices:
        driver, *rest = text.split(",")
        specs.append(OptionSpec(driver, dict(item.split("=", 1) for item in rest),
                                f"-device {text}"))
    fsdevs = {"fs0": parse_fsdev(f"local,id=fs0,path={share},security_model=none")}
    system, _ = build_board(bios="none", devices=specs, fsdevs=fsdevs)
    return system


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
@pytest.mark.parametrize("device", ["virtio-9p-pci,fsdev=fs0,mount_tag=t",
                                    "virtio-9p-pci-non-transitional,fsdev=fs0,mount_tag=t",
                                    "virtio-9p-pci,fsdev=fs0,mount_tag=t,vectors=0"])
def test_pci_function_matches_qemu(share: Path, device: str) -> None:
    system = _board_with(share, device)
    args = ["-M", "virt", "-bios", "none", "-fsdev",
            f"local,id=fs0,path={share},security_model=none", "-device", device]
    base = ECAM + (1 << 15)
    ours = [system.bus.read(base + 4 * i, 4) for i in range(64)]
    assert ours == qemu_xp_words(args, base, 64)
    assert ours[0] == 0x10091AF4 or ours[0] == 0x10491AF4
    info = qemu_hmp(args, ["info pci"])
    assert re.search(r"Class 0002: PCI device 1af4:10[04]9", info), info


def test_virtio_9p_device_goes_on_virtio_mmio(share: Path) -> None:
    system = _board_with(share, "virtio-9p-device,fsdev=fs0,mount_tag=t")
    # The highest slot first, as QEMU fills them: 0x10008000.
    assert system.bus.read(0x10008000 + 8, 4) == 9


CLI_CASES = [
    ["-device", "virtio-9p-pci,fsdev=nope,mount_tag=a"],
    ["-device", "virtio-9p-device,mount_tag=a"],
    ["-fsdev", "local,id=r,path=SHARE,security_model=none", "-device", "virtio-9p-pci,fsdev=r"],
    ["-fsdev", "local,id=r,path=SHARE,security_model=none",
     "-device", "virtio-9p-pci,fsdev=r,mount_tag=0123456789abcdef0123456789abcdef"],
    ["-fsdev", "local,id=r,path=SHARE,security_model=none",
     "-fsdev", "local,id=r,path=SHARE,security_model=none"],
    ["-fsdev", "local,id=r,path=SHARE,security_model=bad"],
    ["-fsdev", "local,id=r,security_model=none"],
    ["-fsdev", "local,path=SHARE,security_model=none"],
    ["-virtfs", "local,path=SHARE,security_model=none"],
    ["-virtfs", "local,path=SHARE,security_model=none,mount_tag=m",
     "-virtfs", "local,path=SHARE,security_model=none,mount_tag=m"],
    ["-virtfs", "local,path=SHARE,security_model=none,mount_tag=m",
     "-fsdev", "local,id=m,path=SHARE,security_model=none"],
    ["-virtfs", "local,path=SHARE,security_model=none,mount_tag=0tag"],
    ["-fsdev", "local,id=r,path=SHARE,security_model=none",
     "-device", "virtio-9p-pci,fsdev=r,mount_tag=a,bogus=1"],
]


def _first_error(binary: list[str], args: list[str], env: dict[str, str] | None) -> str:
    proc = subprocess.run([*binary, "-M", "virt", "-accel", "tcg", "-bios", "none",
                           "-display", "none", "-S", "-nodefaults", *args],
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode != 0, proc.stderr
    line = proc.stderr.strip().splitlines()[0]
    return line.split(": ", 1)[1]


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
@pytest.mark.parametrize("case", range(len(CLI_CASES)))
def test_command_line_errors_are_qemus(share: Path, case: int) -> None:
    assert QEMU is not None
    args = [a.replace("SHARE", str(share)) for a in CLI_CASES[case]]
    theirs = _first_error([QEMU], args, None)
    ours = _first_error([sys.executable, "-m", "kvmpy"], args, kvmpy_env())
    # QEMU may add lines of advice; kvmpy says it in one (the first line is the same).
    assert ours == theirs or ours.startswith(theirs + ". ")


def test_virtfs_adds_a_virtio_9p_pci(share: Path) -> None:
    from kvmpy.cli.parser import parse_args

    config = parse_args(["-virtfs", f"local,path={share},security_model=none,mount_tag=m",
                         "-virtfs", f"local,id=x,path={share},security_model=none,"
                                    "mount_tag=n,readonly=on"])
    assert sorted(config.fsdevs) == ["m", "x"]
    assert config.fsdevs["x"].readonly
    assert [(d.driver, d.props) for d in config.devices] == [
        ("virtio-9p-pci", {"fsdev": "m", "mount_tag": "m"}),
        ("virtio-9p-pci", {"fsdev": "x", "mount_tag": "n"})]


def test_one_fsdev_for_two_devices(share: Path) -> None:
    # QEMU lets two 9P devices export the same -fsdev; each has its own server.
    system = _board_with(share, "virtio-9p-pci,fsdev=fs0,mount_tag=a",
                         "virtio-9p-device,fsdev=fs0,mount_tag=b")
    assert system.bus.read(0x10008000 + 8, 4) == 9


def test_missing_share_is_refused_at_the_device(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _board_with(tmp_path / "gone", "virtio-9p-pci,fsdev=fs0,mount_tag=a")
    assert str(info.value).startswith("cannot initialize fsdev 'fs0': failed to open")


# -- a guest driving the device by hand ----------------------------------------------------------

def _raw_share(tmp_path: Path) -> tuple[Path, Path]:
    share, outside = tmp_path / "share", tmp_path / "outside"
    (share / "sub").mkdir(parents=True)
    outside.mkdir()
    (share / "inside.txt").write_text("inside\n")
    (outside / "canary.txt").write_text("canary\n")
    (outside / "canary.txt").chmod(0o644)
    (share / "link_dir").symlink_to(outside)
    (share / "link_file").symlink_to(outside / "canary.txt")
    (share / "link_rel").symlink_to("../outside")
    return share, outside


def _steps(output: str) -> dict[str, list[str]]:
    steps: dict[str, list[str]] = {}
    for line in output.splitlines():
        m = re.match(r"step ([\w-]+): (.*)", line.strip())
        if m:
            steps.setdefault(m.group(1), []).append(m.group(2))
    return steps


def _field(text: str, name: str) -> int:
    m = re.search(rf"\b{name}=(\w+)", text)
    assert m, f"{name} not in {text!r}"
    return int(m.group(1), 0)


def test_raw_guest_cannot_leave_the_export(tmp_path: Path) -> None:
    share, outside = _raw_share(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in outside.iterdir()}
    proc = subprocess.run(
        [sys.executable, "-m", "kvmpy", "-M", "virt", "-m", "128M", "-bios", "none",
         "-nographic", "-accel", "tcg", "-kernel", str(GUEST),
         "-fsdev", f"local,id=r,path={share},security_model=none",
         "-device", "virtio-9p-device,fsdev=r,mount_tag=raw", "-d", "guest_errors"],
        capture_output=True, text=True, timeout=300, env=kvmpy_env(),
        stdin=subprocess.DEVNULL, check=False)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr + out
    assert "ninep-raw: done" in out
    assert "tag raw" in out
    steps = _steps(out)
    assert "timeout" not in "".join(s for v in steps.values() for s in v if "stopped" not in s)

    def one(name: str) -> str:
        (text,) = steps[name]
        return text

    def failed(name: str, *errnos: int) -> None:
        text = one(name)
        assert text.startswith("R7 "), f"{name}: {text}"
        if errnos:
            assert _field(text, "err") in errnos, f"{name}: {text}"

    def walked(name: str, nwqid: int) -> None:
        assert one(name).startswith("R111 ") and _field(one(name), "nwqid") == nwqid, one(name)

    assert one("version").startswith("R101 ")
    assert _field(one("version"), "msize") == 8192
    # msize far above what the server takes: refused, or cut down to at most 512 KiB.
    huge = one("version-huge")
    assert huge.startswith("R7 ") or _field(huge, "msize") <= MAX_MSIZE
    # A walk stops at a symbolic link: it is never followed out of the export.
    walked("walk-through-symlink", 1)
    walked("walk-symlink-file", 1)
    for name in ("open-symlink-file-write", "open-symlink-file-read", "truncate-via-symlink"):
        failed(name)
    # (A mode change on the link itself may succeed or fail; its target must not change.)
    assert _field(one("getattr-symlink"), "mode") & 0o170000 == 0o120000  # the link itself
    failed("create-in-symlink-dir")
    failed("create-in-symlink-rel")
    # ".." of the root is the root.
    assert _field(one("getattr-dotdot"), "qid") == _field(one("getattr-root"), "qid")
    text = one("walk-dotdot-outside")
    assert text.startswith("R7 ") or _field(text, "nwqid") < 4, text
    for name in ("walk-slash-name", "walk-absolute", "walk-sub-slash", "walk-empty",
                 "create-dotdot", "create-slash", "mkdir-slash", "mkdir-dotdot",
                 "symlink-slash", "rename-out", "rename-dotdot", "unlink-dotdot",
                 "unlink-slash", "link-slash"):
        failed(name)
    walked("walk-dot", 1)
    # fids
    failed("walk-fid-reuse")
    failed("walk-unknown-fid")
    failed("clunk-unknown")
    assert one("clunk-twice-1").startswith("R121 ")
    failed("clunk-twice-2")
    failed("walk-clunked")
    # A flush posted with its read: the read is answered (or dropped) before the flush.
    order = re.findall(r"flush-order (\w+)", out)
    assert order == ["read", "flush"]
    assert one("flush-flush").startswith("R109 ")
    # Garbage: every message is answered with an error carrying its tag, or (a lying size
    # field) served as its header says; none stops the device.
    assert all(t.startswith("R7 ") for t in steps["garbage-type"]), steps["garbage-type"]
    assert len(steps["garbage-size"]) == 4
    assert all(t.startswith(("R7 ", "R25 ")) for t in steps["garbage-size"])
    failed("garbage-string")
    failed("garbage-nwname")
    failed("over-msize")
    # A later Tversion starts a new session (the old fids are gone).
    assert one("version-again").startswith("R101 ")
    failed("getattr-after-version")
    assert one("open-again").startswith("R13 ")
    # Counts beyond msize or the reply buffers: the answer fits both.
    assert one("read-huge-count").startswith("R117 ")
    assert _field(one("read-huge-count"), "len") <= 8192
    assert _field(one("read-small-room"), "len") <= 64
    # Device level: no reply room and a cut header each stop the device, a reset revives it.
    assert "step no-room: stopped" in out
    assert "step short-header: stopped" in out
    assert one("version-after-reset").startswith("R101 ")
    assert one("attach-after-reset").startswith("R105 ")
    assert one("version-after-reset-2").startswith("R101 ")
    assert "without space for the reply" in proc.stderr
    assert "header size is 3, should be 7" in proc.stderr
    # Nothing outside the export changed; nothing new appeared there or was planted.
    assert {p.name: (p.read_bytes(), p.stat().st_mode) for p in outside.iterdir()} == before
    assert not (tmp_path / "stolen.txt").exists() and not (tmp_path / "planted.txt").exists()
    assert sorted(p.name for p in share.iterdir()) == [
        "inside.txt", "link_dir", "link_file", "link_rel", "sub"]
    assert (share / "inside.txt").read_text() == "inside\n"


@pytest.mark.skipif(shutil.which("riscv64-unknown-elf-gcc") is None,
                    reason="riscv64-unknown-elf-gcc is not installed")
def test_committed_guest_matches_its_source(tmp_path: Path) -> None:
    guests = Path(__file__).parent / "guests"
    for name in ("ninep_raw.sh", "ninep_raw.c", "mmio_probe.ld"):
        shutil.copy(guests / name, tmp_path / name)
    subprocess.run(["sh", str(tmp_path / "ninep_raw.sh")], check=True, capture_output=True)
    assert (tmp_path / "ninep_raw.elf").read_bytes() == GUEST.read_bytes(), \
        "ninep_raw.elf differs from a rebuild: run tests/hw/guests/build.sh"
