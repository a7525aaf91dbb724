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
    """Type ``command``; return its output (between the echoed line and the next prompt)."""
    import kvmpy.guests as guests

    marker = f"@@{time.monotonic_ns()}@@"
    vm.console.send(f"{command}; echo {marker}\n")
    match = vm.console.expect(rf"(?s)\n(.*?){re.escape(marker)}\r?\n", timeout=CMD_TIMEOUT)
    vm.console.expect(re.escape(guests.PROMPT), timeout=CMD_TIMEOUT)
    return match.group(1).replace("\r", "")


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
