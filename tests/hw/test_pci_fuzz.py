"""Whatever a guest does to the PCIe host bridge and the virtio-pci functions behind it, the VMM
must not raise, hang or die: a bad access is a logged guest error and the guest goes on.

Two fuzzers.  The device-level one drives a GpexHost with virtio-pci functions plugged through
the same MMIO bus layout as the virt board, with seeded random sequences of configuration,
BAR, virtqueue, MSI-X, reset and snapshot operations; any exception that escapes is reported
with the seed, the operation and the operations before it.  The guest one runs
tests/hw/guests/pci_fuzz.elf on ``-M virt -accel tcg`` with three virtio-pci functions: the
guest fuzzes them itself and must reach its PASS exit within the time limit.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kvmpy.hw.pci.virtio_pci  # noqa: F401  (registers the virtio-*-pci types)
from kvmpy import qom
from kvmpy.hw.core import device_new
from kvmpy.hw.pci.gpex import GpexHost
from kvmpy.hw.virtio import RawImage
from kvmpy.hw.virtio.console import VirtConsole
from kvmpy.memory import GuestRAM, MmioBus
from kvmpy.registry_init import load_types

from ..support import kvmpy_env
from .conftest import BufferChardev, FakeIrq

# The virt board's PCIe windows (hw/riscv/virt.c; the 64-bit one as placed above small RAM).
ECAM, ECAM_SIZE = 0x30000000, 0x10000000
PIO, PIO_SIZE = 0x3000000, 0x10000
MMIO, MMIO_SIZE = 0x40000000, 0x40000000
MMIO_HIGH, MMIO_HIGH_SIZE = 0x400000000, 16 << 30
RAM_BASE, RAM_SIZE = 0x80000000, 1 << 20
RINGS = RAM_BASE + 0x10000
"""Where the fuzzer places valid rings (desc, avail, used at 0x4000 apart) and buffers."""

SIZES = (1, 2, 4, 8)
QUEUE_SIZES = (0, 1, 3, 8, 256, 1024, 1025, 0xFFFF)
BAD_ADDRESSES = (0, 0x10000000, ECAM, RAM_BASE + RAM_SIZE - 4, RAM_BASE - 0x1000,
                 (1 << 64) - 0x1000, 0xFFFF_FFFF)


class Board:
    """The PCI part of the virt board, with a mix of virtio-pci functions plugged."""

    def __init__(self, tmp_path: Path, rng: random.Random) -> None:
        self.rng = rng
        self.ram = GuestRAM(RAM_BASE, RAM_SIZE)
        self.ram.write(RAM_BASE, rng.randbytes(RAM_SIZE))
        self.lines = [FakeIrq(32 + i) for i in range(4)]
        self.host = GpexHost(self.lines)
        self.bus = MmioBus()
        self.bus.add(ECAM, ECAM_SIZE, self.host.ecam, "pcie-ecam")
        self.bus.add(MMIO, MMIO_SIZE, self.host.mmio_window(MMIO, "pcie-mmio"))
        self.bus.add(MMIO_HIGH, MMIO_HIGH_SIZE,
                     self.host.mmio_window(MMIO_HIGH, "pcie-mmio-high"))
        self.bus.add(PIO, PIO_SIZE, self.host.io_window(), "gpex_ioport_window")
        image = tmp_path / "disk.img"
        image.write_bytes(bytes(64 << 10))
        self.console = BufferChardev()
        self.functions: dict[int, Any] = {}
        for devfn, name, props, extra in (
                (1 << 3, "virtio-rng-pci", {}, {"entropy": rng.randbytes}),
                (2 << 3, "virtio-blk-pci", {}, {"image": RawImage(str(image))}),
                (3 << 3, "virtio-serial-pci", {"max_ports": "2"}, {}),
                (4 << 3, "virtio-rng-pci-non-transitional", {"page-per-vq": "on"}, {}),
                (5 << 3, "virtio-rng-pci", {"vectors": "0"}, {}),
                (6 << 3, "virtio-rng-pci", {"disable-modern": "on"}, {}),
                (7 << 3, "virtio-blk-pci", {"multifunction": "on"},
                 {"image": RawImage(str(image))}),
                (7 << 3 | 1, "virtio-rng-pci", {}, {})):
            dev = device_new(name, props, ram=self.ram, deliver_msi=self.deliver, **extra)
            self.host.bus.plug(dev, devfn)
            self.functions[devfn] = dev
        self.functions[3 << 3].device.add_port(VirtConsole(backend=self.console))

    def deliver(self, address: int, data: int) -> None:
        """MSI-X messages as the virt board sends them: into RAM, or dropped."""
        if self.ram.contains(address, 4):
            self.ram.write_int(address, 4, data)

    # -- addresses ----------------------------------------------------------------------------

    def ecam(self, devfn: int, offset: int, bus: int = 0) -> int:
        return ECAM + (bus << 20 | devfn << 12 | offset)

    def cpu_address(self, bar: Any, offset: int) -> int | None:
        """Where the CPU reaches ``offset`` of a mapped BAR, or None (outside the windows)."""
        if bar.addr is None:
            return None
        addr: int = bar.addr + offset
        if bar.is_io:
            return PIO + addr if addr < PIO_SIZE else None
        for base, size in ((MMIO, MMIO_SIZE), (MMIO_HIGH, MMIO_HIGH_SIZE)):
            if base <= addr < base + size:
                return addr
        return None

    # -- the operations ------------------------------------------------------------------------

    def value(self, size: int) -> int:
        r = self.rng
        return r.choice((0, (1 << (8 * size)) - 1, r.getrandbits(8 * size), 1, 0x80))

    def op_config(self) -> str:
        """A configuration access, mostly to the functions that exist, mostly in the header
        and capabilities; sometimes another bus or an empty slot; unaligned offsets too."""
        r = self.rng
        devfn = r.choice(list(self.functions)) if r.random() < 0.85 else r.randrange(256)
        bus = 0 if r.random() < 0.95 else r.randrange(1, 256)
        offset = r.randrange(0x100) if r.random() < 0.8 else r.randrange(0x1000)
        size = r.choice(SIZES)
        addr = self.ecam(devfn, offset, bus)
        if addr + size > ECAM + ECAM_SIZE:
            addr = ECAM + ECAM_SIZE - size
        if r.random() < 0.6:
            value = self.value(size)
            self.bus.write(addr, size, value)
            return f"config write {bus:02x}:{devfn >> 3:02x}.{devfn & 7} +0x{offset:x} " \
                   f"size {size} = 0x{value:x}"
        self.bus.read(addr, size)
        return f"config read {bus:02x}:{devfn >> 3:02x}.{devfn & 7} +0x{offset:x} size {size}"

    def op_map(self) -> str:
        """Place a function's BARs: where Linux would, on top of another function's, at 0,
        outside the windows, across a window's end, or anywhere; with a random command."""
        r = self.rng
        devfn = r.choice(list(self.functions))
        layout = r.choice(("good", "overlap", "zero", "outside", "edge", "random"))
        slot = list(self.functions).index(devfn)
        addrs = {"good": (0x1000 + 0x100 * slot, MMIO + 0x10000 * slot,
                          MMIO + 0x1000000 + 0x1000000 * slot),
                 "overlap": (0x1000, MMIO, MMIO),
                 "zero": (0, 0, 0),
                 "outside": (0xFFFFFFE0, 0xFFFFF000, (1 << 64) - 0x4000),
                 "edge": (PIO_SIZE - 0x10, MMIO + MMIO_SIZE - 0x800, MMIO_HIGH - 0x2000),
                 "random": (r.getrandbits(32), r.getrandbits(32), r.getrandbits(64))}[layout]
        io, msix, modern = addrs
        command = 7 if r.random() < 0.7 else r.getrandbits(16)
        self.bus.write(self.ecam(devfn, 4), 2, 0)
        self.bus.write(self.ecam(devfn, 0x10), 4, io | 1)
        self.bus.write(self.ecam(devfn, 0x14), 4, msix & 0xFFFFFFFF)
        self.bus.write(self.ecam(devfn, 0x20), 4, modern & 0xFFFFFFFF)
        self.bus.write(self.ecam(devfn, 0x24), 4, modern >> 32)
        self.bus.write(self.ecam(devfn, 4), 2, command)
        return f"map {devfn:02x} {layout} command 0x{command:x}"

    def op_bar(self) -> str:
        """An access to a mapped BAR (or just past it), through the windows."""
        r = self.rng
        bars = [(dev, bar) for dev in self.functions.values() for bar in dev.bars.values()]
        reachable = [(dev, bar) for dev, bar in bars if self.cpu_address(bar, 0) is not None]
        dev, bar = r.choice(reachable if reachable and r.random() < 0.9 else bars)
        size = r.choice(SIZES)
        offset = r.randrange(min(bar.size, 0x4000) + 16)
        if bar.index == 4 and r.random() < 0.7:  # near the start of a region
            offset = r.choice((0, 0x1000, 0x2000, 0x3000)) + r.randrange(0x40)
        elif bar.index == 1 and r.random() < 0.7:  # the table's first entries, the PBA
            offset = r.choice((0, 0x800)) + r.randrange(0x40)
        if bar.size > 0x4000 and r.random() < 0.3:  # page-per-vq notify pages
            offset = r.randrange(bar.size)
        addr = self.cpu_address(bar, offset)
        if addr is None:
            addr = r.choice((PIO + r.randrange(PIO_SIZE - 8), MMIO + r.randrange(0x2000000)))
        if r.random() < 0.6:
            value = self.value(size)
            self.bus.write(addr, size, value)
            return f"bar write {dev.devfn:02x} BAR{bar.index} 0x{addr:x} size {size} " \
                   f"= 0x{value:x}"
        self.bus.read(addr, size)
        return f"bar read {dev.devfn:02x} BAR{bar.index} 0x{addr:x} size {size}"

    def op_queue(self) -> str:
        """Configure a queue through the modern (or legacy) registers directly: rings valid,
        outside RAM or in MMIO, any size; fill them with noise; DRIVER_OK; notify."""
        r = self.rng
        dev = r.choice(list(self.functions.values()))
        nqueues = len(dev.vqs)
        queue = r.randrange(nqueues + 2)
        if r.random() < 0.8:  # bus mastering on, as a driver does: the device may DMA
            command = self.bus.read(self.ecam(dev.devfn, 4), 2)
            self.bus.write(self.ecam(dev.devfn, 4), 2, command | 4)
        if 4 in dev.bars and (0 not in dev.bars or r.random() < 0.7):
            modern = dev.bars[4].region
            modern.mmio_write(0x14, 1, 0)
            modern.mmio_write(0x14, 1, 3)
            for sel in (0, 1):
                modern.mmio_write(0x00, 4, sel)
                offered = modern.mmio_read(0x04, 4)
                modern.mmio_write(0x08, 4, sel)
                modern.mmio_write(0x0C, 4, offered & r.getrandbits(32))
            modern.mmio_write(0x14, 1, 0xB)
            modern.mmio_write(0x16, 2, queue)
            modern.mmio_write(0x18, 2, r.choice(QUEUE_SIZES))
            for reg, area in ((0x20, 0), (0x28, 0x4000), (0x30, 0x8000)):
                addr = RINGS + area if r.random() < 0.7 else r.choice(BAD_ADDRESSES)
                modern.mmio_write(reg, 4, addr & 0xFFFFFFFF)
                modern.mmio_write(reg + 4, 4, addr >> 32)
            modern.mmio_write(0x1C, 2, 1 if r.random() < 0.9 else r.getrandbits(16))
            modern.mmio_write(0x14, 1, 0xF)
            if r.random() < 0.5:  # MSI-X vectors (reset by the status write above)
                modern.mmio_write(0x10, 2, r.randrange(4))
                modern.mmio_write(0x1A, 2, r.randrange(4))
            self.noise(RINGS, 0xC000)
            mult = 0x1000 if dev.page_per_vq else 4
            modern.mmio_write(0x3000 + mult * queue, 2, queue)
            how = "modern"
        else:
            legacy = dev.bars[0].region
            legacy.mmio_write(18, 1, 0)
            legacy.mmio_write(4, 4, legacy.mmio_read(0, 4) & r.getrandbits(32))
            legacy.mmio_write(14, 2, queue)
            pfn = (RINGS >> 12) if r.random() < 0.7 else r.getrandbits(32)
            legacy.mmio_write(8, 4, pfn)
            legacy.mmio_write(18, 1, 7)
            self.noise(RINGS, 0xC000)
            legacy.mmio_write(16, 2, queue)
            how = "legacy"
        return f"queue {dev.devfn:02x} {how} {queue}"

    def noise(self, gpa: int, length: int) -> None:
        """Random descriptors (mostly pointing at the buffers after the rings) and rings."""
        r = self.rng
        data = bytearray(r.randbytes(length))
        for i in range(0, min(length, 0x4000), 16):
            if r.random() < 0.7:
                addr = RINGS + 0xC000 + r.randrange(0x20000)
                data[i:i + 8] = addr.to_bytes(8, "little")
                data[i + 8:i + 12] = r.randrange(0x2000).to_bytes(4, "little")
                data[i + 14:i + 16] = r.randrange(16).to_bytes(2, "little")
        avail = 0x4000  # a few requests posted, heads mostly in range
        data[avail + 2:avail + 4] = r.randrange(4).to_bytes(2, "little")
        for j in range(16):
            data[avail + 4 + 2 * j:avail + 6 + 2 * j] = r.randrange(16).to_bytes(2, "little")
        self.ram.write(gpa, bytes(data))

    def op_msix(self) -> str:
        """Aim MSI-X vectors at RAM, at the function's own notify register or MSI-X table,
        or anywhere; enable, mask and unmask through the capability."""
        r = self.rng
        dev = r.choice([d for d in self.functions.values() if d.msix is not None])
        targets = [RAM_BASE + r.randrange(RAM_SIZE - 4), r.getrandbits(64),
                   ECAM + (dev.devfn << 12)]
        for bar in dev.bars.values():
            if bar.addr is not None:
                targets.append(bar.addr + (0x3000 if bar.index == 4 else 0))
        table = dev.msix
        vector = r.randrange(table.vectors + 1)
        address = r.choice(targets)
        entry = 16 * vector  # vector == vectors: just past the table
        table.mmio_write(entry, 8, address)
        table.mmio_write(entry + 8, 4, r.getrandbits(32))
        table.mmio_write(entry + 12, 4, r.choice((0, 1, r.getrandbits(32))))
        control = r.choice((0x8000, 0xC000, 0, r.getrandbits(16)))
        self.bus.write(self.ecam(dev.devfn, table.cap + 2), 2, control)
        if 4 in dev.bars:
            dev.bars[4].region.mmio_write(0x10, 2, r.randrange(4))
            dev.bars[4].region.mmio_write(0x1A, 2, r.randrange(4))
        return f"msix {dev.devfn:02x} vector {vector} -> 0x{address:x} control 0x{control:x}"

    def op_pci_cfg_window(self) -> str:
        """An access through the VIRTIO_PCI_CAP_PCI_CFG capability."""
        r = self.rng
        dev = r.choice([d for d in self.functions.values() if d.modern_enabled])
        cap = dev.cfg_cap
        bar = 4 if r.random() < 0.8 else r.getrandbits(8)
        offset = r.randrange(0x4000) if r.random() < 0.8 else r.getrandbits(32)
        length = r.choice((1, 2, 4, 0, 3, 8, 0xFFFFFFFF))
        self.bus.write(self.ecam(dev.devfn, cap + 4), 1, bar)
        self.bus.write(self.ecam(dev.devfn, cap + 8), 4, offset)
        self.bus.write(self.ecam(dev.devfn, cap + 12), 4, length)
        size = r.choice((1, 2, 4))
        if r.random() < 0.5:
            self.bus.write(self.ecam(dev.devfn, cap + 16), size, r.getrandbits(32))
        else:
            self.bus.read(self.ecam(dev.devfn, cap + 16), size)
        return f"pci_cfg window {dev.devfn:02x} bar {bar} +0x{offset:x} length {length}"

    def op_input(self) -> str:
        data = self.rng.randbytes(self.rng.randrange(1, 64))
        self.console.type(data)
        return f"console input {data!r}"

    def op_reset(self) -> str:
        self.host.ecam.reset()
        return "system reset"

    def op_snapshot(self) -> str:
        dev = self.rng.choice(list(self.functions.values()))
        state = dev.get_state()
        dev.reset()
        dev.set_state(state)
        self.host.bus.update_mappings()
        return f"snapshot {dev.devfn:02x}"

    def check_intx(self) -> None:
        """Each INTx line of the bus is high exactly while a function drives it (its pin
        asserted, INTx not disabled), through the swizzle of its slot."""
        want = [False] * 4
        for devfn, dev in [(0, self.host.root), *self.functions.items()]:
            if dev.irq_level and dev.intx_pin and not dev.get_config(4, 2) & 0x400:
                want[(dev.intx_pin - 1 + (devfn >> 3)) % 4] = True
        assert [line.level for line in self.lines] == want

    def operations(self) -> list[tuple[float, Callable[[], str]]]:
        return [(30, self.op_config), (10, self.op_map), (30, self.op_bar), (12, self.op_queue),
                (8, self.op_msix), (6, self.op_pci_cfg_window), (3, self.op_input),
                (0.5, self.op_reset), (1.5, self.op_snapshot)]


@pytest.mark.parametrize("seed", range(6))
def test_random_pci_operations_never_raise(tmp_path: Path, seed: int, guest_errors: Any) -> None:
    rng = random.Random(seed)
    board = Board(tmp_path, rng)
    weights, ops = zip(*board.operations(), strict=True)
    done: list[str] = []
    for _ in range(3000):
        op = rng.choices(ops, weights)[0]
        try:
            done.append(op())
            board.check_intx()
        except Exception as exc:  # report the sequence that led there
            trail = "\n".join(done[-20:])
            raise AssertionError(
                f"seed {seed}, operation {len(done)} ({op.__name__}) raised:\n"
                f"{''.join(traceback.format_exception(exc))}\nafter:\n{trail}") from exc
    assert any("region 'pcie-ecam', reason: invalid size" in m for m in guest_errors.messages)


# -- the guest --------------------------------------------------------------------------------

GUEST = Path(__file__).parent / "guests" / "pci_fuzz.elf"
GUEST_TIMEOUT_S = 300.0
"""The run takes about 10 s on an x86 host (3.3 s of it the guest waiting for fresh
guest-error rate windows); the limit leaves room for slow hosts and qemu-user."""


def _tcg_unavailable() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        accel: Any = info.cls
        if getattr(accel, "name", None) == "tcg":
            reason: str | None = accel.unavailable_reason()
            return reason
    return "the tcg accelerator is not registered in this build"


@pytest.mark.skipif(shutil.which("riscv64-unknown-elf-gcc") is None,
                    reason="riscv64-unknown-elf-gcc is not installed (gcc-riscv64-unknown-elf)")
def test_committed_elf_matches_its_source(tmp_path: Path) -> None:
    guests = GUEST.parent
    for name in ("build.sh", "mmio_probe.S", "mmio_probe.ld", "pci_fuzz.S"):
        shutil.copy(guests / name, tmp_path / name)
    subprocess.run(["sh", str(tmp_path / "build.sh")], check=True, capture_output=True,
                   timeout=120)
    assert (tmp_path / GUEST.name).read_bytes() == GUEST.read_bytes(), \
        "pci_fuzz.elf differs from a rebuild: run tests/hw/guests/build.sh"


BOARDS = {
    # The command line in the guest's source: transitional functions with MSI-X, slots 1-3.
    "transitional": ["-device", "virtio-rng-pci", "-device", "virtio-serial-pci",
                     "-drive", "file={disk},if=virtio,format=raw"],
    # Other layouts: no legacy BAR and an 8 MiB notify BAR, no MSI-X, no modern BAR, and a
    # multi-function slot.
    "variants": ["-device", "virtio-rng-pci-non-transitional,page-per-vq=on",
                 "-device", "virtio-rng-pci,vectors=0",
                 "-device", "virtio-rng-pci,disable-modern=on",
                 "-drive", "file={disk},if=none,id=d0,format=raw",
                 "-device", "virtio-blk-pci,drive=d0,addr=5.0,multifunction=on",
                 "-device", "virtio-serial-pci,addr=5.1"],
    # PCI Express root ports (nested too): their configuration space takes the config phase's
    # garbage (bus numbers, windows, slot control, secondary bus reset) with functions behind.
    "root-ports": ["-device", "pcie-root-port,id=rp1,chassis=1,multifunction=on",
                   "-device", "virtio-rng-pci,bus=rp1",
                   "-device", "pcie-root-port,id=rp2,chassis=2,addr=1.1",
                   "-device", "pcie-root-port,id=rp3,chassis=3,bus=rp2",
                   "-device", "virtio-serial-pci,bus=rp3", "-device", "virtio-rng-pci"],
}


@pytest.mark.parametrize("board", BOARDS)
def test_guest_fuzzing_pci_ends_normally(tmp_path: Path, board: str) -> None:
    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    serial = tmp_path / "serial.txt"
    cmd = [sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg", "-m", "128M",
           "-bios", "none", "-display", "none", "-monitor", "none",
           "-serial", f"file:{serial}", "-d", "guest_errors", "-kernel", str(GUEST),
           *(arg.format(disk=disk) for arg in BOARDS[board])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=GUEST_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False, env=kvmpy_env())
    except subprocess.TimeoutExpired as exc:
        output = serial.read_text(errors="replace") if serial.exists() else ""
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise AssertionError(f"kvmpy did not finish in {GUEST_TIMEOUT_S} s; the guest got "
                             f"to:\n{output}\nstderr (end):\n{stderr[-3000:]}") from None
    output = serial.read_text(errors="replace")
    log = proc.stderr
    assert "Traceback" not in log and "internal error" not in log, log[-5000:]
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{output}\n{log[-5000:]}"
    phases = ["config", "bars", "queues", "msi-x", "alive"]
    assert [line[len("pci-fuzz: "):] for line in output.splitlines()
            if line[len("pci-fuzz: "):] in phases] == phases, output
    assert "!" not in output  # the messages aimed at the UART were dropped
    assert "pci-fuzz: traps 0000000000000000" in output  # nothing the guest touched faulted
    if board != "transitional":
        return
    # MSI-X still works after the fuzzing: into RAM, and held while masked (three functions).
    assert output.count("pci-fuzz: msi-x to RAM ok") == 3, output
    assert output.count("pci-fuzz: msi-x pending ok") == 3, output
    # Each phase starts a fresh rate-limit window with these guest errors.
    for expected in (
            "Invalid write at addr 0x0, size 8, region 'pcie-ecam', reason: invalid size",
            "Invalid read at addr 0x0, size 8, region 'pcie-ecam', reason: invalid size",
            "PCI io write at 0x1000 of size 8: not a valid access to BAR0",
            "virtio-rng-device: queue 0: descriptor chain loops or is longer than its table",
            "virtio-rng-pci: invalid queue size 0 for queue 0",
            # the function's own notify register, as an MSI-X message target
            "MSI-X message 0x0 to 0x41003000, outside RAM: dropped"):
        assert expected in log, log[-5000:]
