"""``pcie-root-port`` on the virt board against QEMU 7.2: the root port's and the endpoints'
4 KiB configuration spaces as reset leaves them and after a guest programmed them (bus
numbers, windows, BARs, every writable bit), accesses forwarded through the windows, the
command-line errors, and the bundled Linux guest using a device behind a port.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from kvmpy.errors import ConfigError

from .pcie_guest import Dump, Fill, Write, cfg, run_kvmpy, run_qemu
from .test_virt_pci import _devices, _drive

QEMU = shutil.which("qemu-system-riscv64")
RP = "pcie-root-port,id=rp1,chassis=1"
LIBVIRT = ["pcie-root-port,port=8,chassis=1,id=pci.1,bus=pcie.0,multifunction=on,addr=0x1",
           "pcie-root-port,port=9,chassis=2,id=pci.2,bus=pcie.0,addr=0x1.0x1"]
"""libvirt's default riscv64 topology: two root ports, functions 0 and 1 of slot 1."""
EXP = 0x54
"""Where the root port's PCI Express capability is (after SSVID at 0x40, MSI-X at 0x48)."""
SLTCTL = EXP + 0x18


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return path


def _args(devices: list[str], disk: Path) -> list[str]:
    """The command line for ``devices``; drive ``d0`` is ``disk``."""
    args = ["-drive", f"if=none,id=d0,file={disk},format=raw"]
    for text in devices:
        args += ["-device", text]
    return args


def _differences(theirs: list[int], ours: list[int]) -> list[str]:
    return [f"+0x{4 * i:03x}: qemu {a:08x} kvmpy {b:08x}"
            for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]


# -- as reset leaves them ---------------------------------------------------------------------

RESET_CASES = {
    "one-port-one-device": [RP, "virtio-rng-pci,bus=rp1"],
    "empty-port": [RP],
    "libvirt": [*LIBVIRT, "virtio-blk-pci,bus=pci.1,addr=0x0,drive=d0"],
    "link-and-slot": ["pcie-root-port,chassis=3,slot=5,port=0x21,x-speed=5,x-width=4"],
    "gen1-x1": ["pcie-root-port,chassis=3,x-speed=2_5,x-width=1"],
    "no-acs-no-hotplug": ["pcie-root-port,chassis=3,disable-acs=on,hotplug=off"],
    "no-power-controller": ["pcie-root-port,id=r,chassis=3,power_controller_present=off",
                            "virtio-rng-pci,bus=r,addr=3"],
    "acpi-hotplug": ["pcie-root-port,chassis=3,x-native-hotplug=off"],
    "reserve": ["pcie-root-port,chassis=3,bus-reserve=3,mem-reserve=2M,pref64-reserve=1G"],
    "no-io": ["pcie-root-port,chassis=3,io-reserve=0,aer_log_max=0"],
    "functions": ["pcie-root-port,chassis=3,multifunction=on",
                  "pcie-root-port,chassis=3,slot=1,addr=1.1", "pcie-root-port,chassis=4,addr=1.7"],
}


@pytest.mark.parametrize("case", sorted(RESET_CASES))
def test_reset_config_space_matches_qemu(board: Any, oracle: Any, disk: Path, tmp_path: Path,
                                         case: str) -> None:
    devices = RESET_CASES[case]
    system, machine = board(bios="none", devices=_devices(*devices),
                            drives=[_drive(disk, "none", "d0")])
    dumps = [(cfg(0, devfn), 1024) for devfn in sorted(machine.devices["pcie"].bus.devices)]
    assert QEMU is not None
    theirs = run_qemu(QEMU, _args(devices, disk), None, dumps, tmp_path)
    for (addr, count), words in zip(dumps, theirs, strict=True):
        ours = [system.bus.read(addr + 4 * i, 4) for i in range(count)]
        assert ours == words, f"0x{addr:x}: {_differences(words, ours)}"


def test_the_root_port_header_and_capabilities(board: Any) -> None:
    """What the oracle comparison above checks, spelled out (and checked without QEMU)."""
    system, _ = board(bios="none", devices=_devices(RP, "virtio-rng-pci,bus=rp1"))
    rp = [system.bus.read(cfg(0, 8, 4 * i), 4) for i in range(1024)]
    assert rp[0] == 0x000C1B36 and rp[2] == 0x06040000 and rp[3] == 0x00010000  # type 1
    assert rp[0x34 // 4] == EXP and rp[0x3C // 4] == 0x100  # INTA, bridge control 0
    assert rp[0x1C // 4:0x30 // 4] == [0xF0, 0xFFF0, 0x1FFF1, 0, 0]  # windows closed
    assert rp[0x40 // 4:0x4C // 4] == [0x0000000D, 0x1B36, 0x00004011]  # SSVID, MSI-X
    assert rp[EXP // 4] == 0x01424810  # PCIe v2, root port, slot implemented
    assert rp[SLTCTL // 4] == 0x004001C0  # slot powered, power indicator on; present
    assert rp[0x100 // 4] == 0x14820001 and rp[0x148 // 4] == 0x0001000D  # AER -> ACS
    ep = [system.bus.read(cfg(1, 0, 4 * i), 4) for i in range(4)]
    assert ep == [0xFFFFFFFF] * 4  # bus 1 is unreachable until the port is numbered


# -- after a guest programmed them ------------------------------------------------------------

PORT, ENDPOINT = cfg(0, 8), cfg(1, 0)
NUMBER = [Write(PORT + 0x18, 4, 0x010100)]
"""Primary 0, secondary 1, subordinate 1."""
LINUX = [*NUMBER,
         Write(PORT + 0x1C, 2, 0x1010),           # I/O 0x1000-0x1fff
         Write(PORT + 0x20, 4, 0x40104000),       # memory 0x40000000-0x401fffff
         Write(PORT + 0x24, 4, 0x00110001), Write(PORT + 0x28, 4, 4), Write(PORT + 0x2C, 4, 4),
         Write(PORT + 0x10, 4, 0x40200000),       # the port's MSI-X BAR
         Write(ENDPOINT + 0x14, 4, 0x40000000),   # MSI-X BAR, in the memory window
         Write(ENDPOINT + 0x20, 4, 0x0C), Write(ENDPOINT + 0x24, 4, 4),  # BAR4 at 16 GiB
         Write(ENDPOINT + 0x04, 2, 0x6), Write(PORT + 0x04, 2, 0x7)]
"""What Linux's PCI core does (pci_assign_unassigned_bus_resources), prefetchable window
above 4 GiB."""
BEHIND = [RP, "virtio-rng-pci,bus=rp1"]
PORT_AND_ENDPOINT = [(PORT, 1024), (ENDPOINT, 1024)]
PROGRAMS: dict[str, tuple[list[str], list[Write | Fill], list[Dump], list[str]]] = {
    "numbered": (BEHIND, NUMBER, PORT_AND_ENDPOINT, []),
    "enumerated": (BEHIND, LINUX, [*PORT_AND_ENDPOINT, (0x40000000, 1024), (0x4_0000_0000, 16),
                              (0x4_0000_2000, 4), (0x40200000, 1024), (cfg(2, 0), 4)], []),
    "windows-off": (BEHIND, LINUX[:-1], [(PORT, 16), (0x40000000, 4), (0x4_0000_0000, 4)], []),
    "every-port-bit": ([RP], [Fill(PORT, PORT + 0x1000, 0xFFFFFFFF)], [(PORT, 1024)], []),
    "every-endpoint-bit": ([RP, "virtio-blk-pci,bus=rp1,drive=d0,aer=on,ats=on"],
                           [*NUMBER, Fill(ENDPOINT, ENDPOINT + 0x1000, 0xFFFFFFFF)],
                           PORT_AND_ENDPOINT, []),
    "reset": (BEHIND, [*LINUX, Write(PORT + SLTCTL, 2, 0x3F), Write(PORT + 0x3C, 4, 0x430155)],
              PORT_AND_ENDPOINT, ["stop", "system_reset"]),
    "secondary-bus-reset": (BEHIND, [*LINUX, Write(PORT + 0x3E, 2, 0x40)],
                            [(PORT, 16), (ENDPOINT, 16), (0x40000000, 4)], []),
    "unpowered-function": ([RP, "virtio-rng-pci,bus=rp1,addr=3"], NUMBER,
                           [(PORT, 1024), (cfg(1, 0x18), 16)], []),
    "slot-powered-on": ([RP, "virtio-rng-pci,bus=rp1,addr=3"],
                        [*NUMBER, Write(PORT + SLTCTL, 2, 0x1C0)], [(cfg(1, 0x18), 16)], []),
    "bus-number-lookup": ([RP, "virtio-rng-pci,bus=rp1", "pcie-root-port,id=b,chassis=2",
                           "virtio-blk-pci,bus=b,drive=d0"],
                          [Write(PORT + 0x18, 4, 0x001100), Write(cfg(0, 16, 0x18), 4, 0x100500)],
                          [(cfg(n, 0), 4) for n in (0x11, 0x10, 5, 3, 1)], []),
    "hotplug-event-msi": ([RP], [Write(PORT + 0x10, 4, 0x40200000), Write(PORT + 0x04, 2, 6),
                                 Write(0x40200000, 4, 0x80200000), Write(0x40200008, 4, 0x1234),
                                 Write(0x4020000C, 4, 0), Write(PORT + 0x48, 4, 0x80000000),
                                 Write(PORT + SLTCTL, 2, 0x30)],
                          [(PORT, 64), (0x80200000, 1)], []),
}
"""name: (devices, the guest's writes, what to dump, HMP commands before dumping)."""


@pytest.mark.parametrize("case", sorted(PROGRAMS))
def test_guest_programmed_config_matches_qemu(tmp_path: Path, disk: Path, case: str) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    devices, steps, dumps, commands = PROGRAMS[case]
    args = _args(devices, disk)
    theirs = run_qemu(QEMU, args, steps, dumps, tmp_path, commands)
    ours = run_kvmpy(args, steps, dumps, tmp_path, commands)
    for (addr, _), their_words, our_words in zip(dumps, theirs, ours, strict=True):
        assert our_words == their_words, f"0x{addr:x}: {_differences(their_words, our_words)}"
    if case == "enumerated":  # the virtio common config through the prefetchable window
        assert ours[3][0x04 // 4] not in (0, 0xFFFFFFFF)  # device features 0-31
    if case == "hotplug-event-msi":
        assert ours[1] == [0x1234]  # the command completed event sent MSI-X vector 0


# -- command-line errors ----------------------------------------------------------------------

@pytest.mark.parametrize(("devices", "message"), [
    ([RP, "virtio-rng-pci,bus=pci.1"], "Bus 'pci.1' not found"),
    (["pcie-root-port", "pcie-root-port"], "Can't add chassis slot, error -16"),
    ([RP, "virtio-rng-pci,bus=rp1", "virtio-rng-pci,bus=rp1,addr=0"],
     "PCI: slot 0 function 0 not available for virtio-rng-pci, in use by "
     "virtio-rng-pci,id=(null)"),
    ([RP, "virtio-rng-pci,bus=rp1,addr=0.1,multifunction=on", "virtio-rng-pci,bus=rp1,addr=0"],
     "PCI: 0.0 indicates single function, but 0.1 is already populated."),
    ([RP, "virtio-rng-pci,bus=rp1,disable-modern=on"],
     "device cannot work as neither modern nor legacy mode is enabled"),
    ([RP, "virtio-rng-device,bus=rp1"], "Device 'virtio-rng-device' can't go on PCIE bus"),
    ([RP, "pcie-root-port,id=rp1,chassis=2"], "Duplicate ID 'rp1' for device"),
    (["pcie-root-port,chassis=1", "virtio-rng-pci,bus=pcie.1"], "Bus 'pcie.1' not found"),
    (["pcie-root-port,chassis=256"], "Parameter 'chassis' expects uint8_t"),
    (["pcie-root-port,chassis=one"], "Parameter 'chassis' expects integer"),
    (["pcie-root-port,x-speed=3"], "Parameter 'x-speed' does not accept value '3'"),
    (["pcie-root-port,aer_log_max=999"],
     "Invalid aer_log_max 999. The max number of aer log is 128"),
    (["pcie-root-port,pref32-reserve=1M,pref64-reserve=1M"],
     "PCI resource reserve cap: PREF32 and PREF64 conflict"),
    (["pcie-root-port,mem-reserve=4G"],
     "PCI resource reserve cap: mem-reserve must be less than 4G"),
    (["pcie-root-port,io-reserve=lots"], "Parameter 'io-reserve' expects size"),
])
def test_errors_are_qemus(board: Any, oracle: Any, disk: Path, devices: list[str],
                         message: str) -> None:
    with pytest.raises(ConfigError) as info:
        board(bios="none", devices=_devices(*devices))
    line = f"{info.value.option}: {info.value}"
    assert line == f"-device {devices[-1]}: {message}"
    assert f"qemu-system-riscv64: {line}" in oracle.hmp(["-M", "virt", "-bios", "none",
                                                         *_args(devices, disk)], [])


def test_buses_are_found_as_qemu_names_them(board: Any) -> None:
    """A port's bus is named by its id, else ``pcie.N`` counting unnamed ones from 0; the
    root bus is found first for the name it shares with the first unnamed port's bus."""
    _, machine = board(bios="none", devices=_devices(
        "pcie-root-port,chassis=1", "pcie-root-port,chassis=2,id=x", "pcie-root-port,chassis=3",
        "virtio-rng-pci,bus=pcie.1", "virtio-rng-pci,bus=pcie.0", "virtio-rng-pci,bus=x"))
    root = machine.devices["pcie"].bus
    ports = {dev.devfn >> 3: dev for dev in root.devices.values() if dev.is_bridge}
    assert [ports[slot].secondary_bus.name for slot in (1, 2, 3)] == ["pcie.0", "x", "pcie.1"]
    assert list(ports[3].secondary_bus.devices) == [0]
    assert list(ports[2].secondary_bus.devices) == [0]
    assert root.devices[4 << 3].type_name == "virtio-rng-pci"


# -- the bundled guest ------------------------------------------------------------------------

LISTING = ("lspci; for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(cat $d/vendor "
           "$d/device $d/class $d/irq); done")


def test_linux_uses_an_rng_behind_a_root_port() -> None:
    """The bundled kernel numbers the port, places the windows and BARs, and reads the
    entropy device behind it with interrupts through the port (PLIC source 33: INTA of slot
    0 behind the port in slot 1); the same listing as QEMU's."""
    from kvmpy.process import ProcessVM
    from kvmpy.vm import VM

    from .test_virt_linux import BOOT_TIMEOUT, _guest, _shell, _tcg_unavailable

    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    guests = _guest()
    args = ["-M", "virt", "-kernel", str(guests.kernel_path()), "-initrd",
            str(guests.initrd_path()), "-append", "console=ttyS0",
            "-device", "pcie-root-port,id=rp1,chassis=1", "-device", "virtio-rng-pci,bus=rp1"]
    vms: dict[str, Any] = {"kvmpy": VM([*args, "-accel", "tcg"])}
    if QEMU is not None:
        vms["qemu"] = ProcessVM(args, binary=[QEMU])
    listings = {}
    for name, vm in vms.items():
        try:
            vm.launch()
            vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
            listings[name] = _shell(vm, LISTING)
            assert _shell(vm, "cat /sys/class/misc/hw_random/rng_current") == "virtio_rng.0\n"
            assert _shell(vm, "head -c 64 /dev/hwrng | wc -c").strip() == "64"
            interrupts = _shell(vm, "grep virtio0 /proc/interrupts")
            assert re.search(r"^\s*\d+:\s+[1-9]\d*\s+SiFive PLIC\s+33 ", interrupts, re.M)
        finally:
            if vm.is_running():
                vm.kill()
    assert listings["kvmpy"].splitlines() == [
        "00:01.0 Class 0604: 1b36:000c", "01:00.0 Class 00ff: 1af4:1044",
        "00:00.0 Class 0600: 1b36:0008",
        "0000:00:00.0 0x1b36 0x0008 0x060000 0", "0000:00:01.0 0x1b36 0x000c 0x060400 0",
        "0000:01:00.0 0x1af4 0x1044 0x00ff00 1"]
    if "qemu" in listings:
        assert listings["kvmpy"] == listings["qemu"]


def test_the_libvirt_topology_addresses(board: Any) -> None:
    """``addr=0x1.0x1`` is slot 1 function 1 (QEMU's ``%x.%x`` takes the 0x prefixes)."""
    _, machine = board(bios="none", devices=_devices(*LIBVIRT))
    root = machine.devices["pcie"].bus
    assert {devfn: dev.secondary_bus.name for devfn, dev in root.devices.items()
            if dev.is_bridge} == {8: "pci.1", 9: "pci.2"}
