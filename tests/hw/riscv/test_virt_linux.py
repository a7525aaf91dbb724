"""Acceptance: the bundled Linux guest on kvmpy's virt board (interpreter accelerator).

Boots to the shell prompt on 1 and 4 harts with ``-bios builtin`` (kvmpy's SBI) and
``-bios default`` (OpenSBI on the interpreter), runs commands, checks /proc/cpuinfo, the RTC
against the host clock, ``-append`` in /proc/cmdline, and that poweroff and reboot from inside
the guest end or restart the VM.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.firmware import opensbi
from kvmpy.registry_init import load_types

BOOT_TIMEOUT = 120.0
CMD_TIMEOUT = 30.0


def _tcg_unavailable() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        if getattr(info.cls, "name", None) == "tcg":
            reason: str | None = info.cls.unavailable_reason()
            return reason
    return "the tcg accelerator is not registered in this build"


def _guest() -> Any:
    try:
        import kvmpy.guests as guests

        guests.kernel_path()
        guests.initrd_path()
    except Exception as exc:  # the bundle is missing or cannot be unpacked here
        pytest.skip(f"bundled guest unavailable: {exc}")
    return guests


@pytest.fixture
def boot() -> Iterator[Any]:
    """``boot(bios=..., smp=..., append=..., **options)`` -> a VM at its shell prompt."""
    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    guests = _guest()
    from kvmpy.vm import VM

    vms: list[Any] = []

    def start(bios: str = "builtin", smp: int = 1, append: str = "console=ttyS0",
              kernel_override: str | None = None, **options: Any) -> Any:
        if bios == "default" and opensbi.find_fw_dynamic() is None:
            pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")
        vm = VM(machine="virt", accel="tcg", bios=bios, smp=smp,
                kernel=kernel_override or str(guests.kernel_path()),
                initrd=str(guests.initrd_path()), append=append, **options)
        vms.append(vm)
        vm.launch()
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
        return vm

    yield start
    for vm in vms:
        if vm.is_running():
            vm.kill()


def run(vm: Any, command: str) -> str:
    """Type ``command``; return its output (see :func:`_shell`)."""
    return _shell(vm, command)


def wait_exit(vm: Any) -> int:
    """The VM's exit status once the guest ended it; the console tail if it does not end."""
    try:
        return int(vm.wait(CMD_TIMEOUT))
    except TimeoutError:
        pytest.fail(f"the VM did not end; console:\n{vm.console.log[-3000:]}")


@pytest.mark.parametrize("bios", ["builtin", "default"])
@pytest.mark.parametrize("smp", [1, 4])
def test_boot_to_shell(boot: Any, bios: str, smp: int) -> None:
    vm = boot(bios=bios, smp=smp, append="console=ttyS0 kvmpy.test=1")
    assert run(vm, "grep -c ^processor /proc/cpuinfo").strip() == str(smp)
    assert "kvmpy.test=1" in run(vm, "cat /proc/cmdline")
    guest_time = int(run(vm, "date +%s").strip().splitlines()[-1])
    assert abs(guest_time - time.time()) < 60
    # User mode reads the time CSR (the vDSO's clock_gettime, which dd calls): the firmware
    # left scounteren's CY/TM/IR set, as OpenSBI does.
    assert _shell(vm, "dd if=/dev/zero of=/dev/null count=1 2>/dev/null; echo rc=$?") == "rc=0\n"
    vm.console.send("poweroff\n")
    assert wait_exit(vm) == 0


def test_reboot_restarts_the_guest(boot: Any) -> None:
    import kvmpy.guests as guests

    vm = boot(bios="builtin", smp=2)
    vm.console.send("reboot\n")
    vm.event_wait("RESET", timeout=CMD_TIMEOUT)
    vm.console.expect(re.escape(guests.BANNER), timeout=BOOT_TIMEOUT)
    vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
    assert run(vm, "echo again").strip().endswith("again")


def test_reboot_with_no_reboot_exits(boot: Any) -> None:
    vm = boot(bios="builtin", no_reboot=True)
    vm.console.send("reboot\n")
    assert wait_exit(vm) == 0


def _distro_kernel(tmp_path: Any) -> str:
    """An unmodified distribution kernel: $KVMPY_DISTRO_KERNEL, else Debian's linux-image .deb
    that ci/ caches (extracted here)."""
    import glob
    import os
    import shutil
    import subprocess

    explicit = os.environ.get("KVMPY_DISTRO_KERNEL")
    if explicit:
        return explicit
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    debs = sorted(glob.glob(os.path.join(repo, "ci", "cache", "debs",
                                         "linux-image-*-riscv64_*_riscv64.deb")))
    if not debs or shutil.which("dpkg-deb") is None:
        pytest.skip("no distribution kernel: set KVMPY_DISTRO_KERNEL or let ci/ cache "
                    "Debian's linux-image-*-riscv64 .deb")
    subprocess.run(["dpkg-deb", "-x", debs[-1], str(tmp_path)], check=True, timeout=120)
    images = glob.glob(str(tmp_path / "boot" / "vmlinu*"))
    if not images:
        pytest.skip(f"{debs[-1]} holds no /boot/vmlinu* image")
    return images[0]


@pytest.mark.parametrize("bios", ["builtin", "default"])
def test_distribution_kernel_boots(boot: Any, tmp_path: Any, bios: str) -> None:
    """Debian's generic riscv64 kernel (an EFI-stub Image, ~30 MB, modular) with the bundled
    initramfs: to the shell on 2 harts, then poweroff."""
    kernel = _distro_kernel(tmp_path)
    vm = boot(bios=bios, smp=2, kernel_override=kernel, memory="1G")
    assert run(vm, "grep -c ^processor /proc/cpuinfo").strip() == "2"
    assert "riscv64" in run(vm, "uname -m")
    vm.console.send("poweroff\n")
    assert wait_exit(vm) == 0


PCI_LISTING = ("for d in /sys/bus/pci/devices/*; do echo ${d##*/} $(cat $d/vendor $d/device "
               "$d/class); done")


def _shell(vm: Any, command: str) -> str:
    """``command``'s output, between markers the echoed command line cannot contain."""
    import kvmpy.guests as guests

    vm.console.send(f"echo @@$((6*7))@@; {command}; echo @@$((6*8))@@\n")
    match = vm.console.expect(r"(?s)@@42@@\r?\n(.*?)@@48@@", timeout=CMD_TIMEOUT)
    vm.console.expect(re.escape(guests.PROMPT), timeout=CMD_TIMEOUT)
    return str(match.group(1)).replace("\r", "")


def _cpio_newc(files: dict[str, bytes]) -> bytes:
    """A newc cpio archive of regular files (and their directories)."""
    out = bytearray()
    dirs = sorted({"/".join(name.split("/")[:i]) for name in files
                   for i in range(1, name.count("/") + 1)})
    entries = [(d, 0o040755, b"") for d in dirs] + \
        [(name, 0o100644, data) for name, data in files.items()] + [("TRAILER!!!", 0, b"")]
    for ino, (name, mode, data) in enumerate(entries, 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += bytes(-len(out) % 4) + data
        out += bytes(-len(out) % 4)
    return bytes(out)


def _initrd_with_modules(tmp_path: Any, base: bytes, modules: tuple[str, ...]) -> str:
    """The bundled initramfs with the distribution kernel's ``modules`` appended as a second
    cpio (the kernel unpacks concatenated archives), uncompressed for busybox's insmod."""
    import glob
    import lzma

    files = {}
    for module in modules:
        found = glob.glob(str(tmp_path / "usr" / "lib" / "modules" / "*" / "kernel" / "**" /
                              f"{module}.ko.xz"), recursive=True)
        if not found:
            pytest.skip(f"the distribution kernel has no module {module}")
        with lzma.open(found[0]) as f:
            files[f"lib/modules/{module}.ko"] = f.read()
    path = tmp_path / "initrd-with-modules"
    path.write_bytes(base + bytes(-len(base) % 4) + _cpio_newc(files))
    return str(path)


DISTRO_PCI_MODULES = ("virtio_blk", "virtio-rng")
"""Debian builds these as modules (VIRTIO_PCI and PCI_HOST_GENERIC are built in)."""


def test_distribution_kernel_uses_pci_disk_and_rng_as_on_qemu(tmp_path: Any) -> None:
    """Debian's kernel with QEMU's riscv64 command line for a disk and an entropy source
    finds both behind the PCIe host bridge, and sees the same PCI functions as under
    QEMU."""
    import shutil

    from kvmpy.process import ProcessVM

    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None:
        pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
    guests = _guest()
    kernel = _distro_kernel(tmp_path)
    initrd = _initrd_with_modules(tmp_path, guests.initrd_path().read_bytes(),
                                  DISTRO_PCI_MODULES)
    marker = b"kvmpy-pci-disk\n"
    listings = {}
    for name, binary in (("kvmpy", None), ("qemu", [qemu])):
        disk = tmp_path / f"{name}.img"
        disk.write_bytes(marker + bytes((8 << 20) - len(marker)))
        args = ["-M", "virt", "-smp", "2", "-m", "1G", "-kernel", kernel,
                "-initrd", initrd, "-append", "console=ttyS0",
                "-drive", f"file={disk},if=virtio,format=raw", "-device", "virtio-rng-pci"]
        if binary is None:
            args += ["-accel", "tcg"]
        vm = ProcessVM(args, binary=binary)
        try:
            vm.launch()
            vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
            listings[name] = _shell(vm, PCI_LISTING)
            _shell(vm, "; ".join(f"insmod /lib/modules/{m}.ko" for m in DISTRO_PCI_MODULES))
            _shell(vm, "for i in 1 2 3 4 5 6 7 8 9 10; do test -b /dev/vda && break; sleep 1; "
                   "done")
            assert _shell(vm, "head -c 15 /dev/vda") == marker.decode()
            _shell(vm, "echo written-over-pci > /dev/vda; sync")
            assert "virtio_rng" in _shell(vm, "cat /sys/class/misc/hw_random/rng_current")
            vm.console.send("poweroff\n")
            assert wait_exit(vm) == 0
        finally:
            if vm.is_running():
                vm.kill()
        assert disk.read_bytes()[:18] == b"written-over-pci\n\0"
    assert listings["kvmpy"] == listings["qemu"]
    assert listings["kvmpy"].splitlines() == [
        "0000:00:00.0 0x1b36 0x0008 0x060000",   # the host bridge
        "0000:00:01.0 0x1af4 0x1005 0x00ff00",   # virtio-rng-pci
        "0000:00:02.0 0x1af4 0x1001 0x010000"]   # -drive if=virtio comes after -device
