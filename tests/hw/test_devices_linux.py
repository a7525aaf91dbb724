"""The device models under the bundled Linux guest (interpreter accelerator): one boot with
a virtio-blk disk, virtio-rng and a virtio console next to the UART, PLIC and RTC, and the
guest's drivers using each of them.  Slow (a boot of the interpreter): the device semantics
themselves are covered by the unit and QEMU-oracle tests of this directory."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.registry_init import load_types

BOOT_TIMEOUT = 180.0
CMD_TIMEOUT = 60.0
DISK_MAGIC = b"KVMPY-DISK-TEST\n"


def _skip_reason() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        if getattr(info.cls, "name", None) == "tcg":
            reason: str | None = info.cls.unavailable_reason()
            return None if reason is None else f"interpreter accelerator unavailable: {reason}"
    return "the tcg accelerator is not registered in this build"


def run(vm: Any, prompt: str, command: str) -> str:
    """``command``'s output, between markers the echoed command line cannot contain (the
    shell expands them), then the prompt."""
    vm.console.send(f"echo @@$((6*7))@@; {command}; echo @@$((6*8))@@\n")
    match = vm.console.expect(r"(?s)@@42@@\r?\n(.*?)@@48@@", timeout=CMD_TIMEOUT)
    vm.console.expect(re.escape(prompt), timeout=CMD_TIMEOUT)
    return str(match.group(1)).replace("\r", "")


def test_guest_drivers_use_the_devices(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        import kvmpy.guests as guests

        kernel, initrd = guests.kernel_path(), guests.initrd_path()
    except Exception as exc:  # the bundle is missing or cannot be unpacked here
        pytest.skip(f"bundled guest unavailable: {exc}")
    from kvmpy.firmware import opensbi
    from kvmpy.vm import VM

    if opensbi.find_fw_dynamic() is None:
        pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")

    disk = tmp_path / "disk.img"
    disk.write_bytes(DISK_MAGIC + bytes((1 << 20) - len(DISK_MAGIC)))
    hvc = tmp_path / "hvc.out"
    vm = VM(machine="virt", accel="tcg", bios="default", kernel=str(kernel),
            initrd=str(initrd), append="console=ttyS0",
            extra_args=["-drive", f"file={disk},if=none,id=hd0,format=raw",
                        "-chardev", f"file,id=c1,path={hvc}"],
            devices=["virtio-blk-device,drive=hd0", "virtio-rng-device",
                     "virtio-serial-device", "virtconsole,chardev=c1"])
    try:
        vm.launch()
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
        prompt = guests.PROMPT
        log = vm.console.log
        assert re.search(r"ttyS0 at MMIO 0x10000000 .* is a 16550A", log)
        assert "plic@c000000: mapped 96 interrupts" in log
        assert "[vda] 2048 512-byte logical blocks" in log
        # virtio-blk: read, write through to the image
        assert run(vm, prompt, "head -c 15 /dev/vda") == DISK_MAGIC[:15].decode()
        run(vm, prompt, "echo written-by-guest > /dev/vda; sync")
        assert disk.read_bytes()[:17] == b"written-by-guest\n"
        # virtio-rng behind /dev/hwrng
        assert "virtio_rng" in run(vm, prompt, "cat /sys/class/misc/hw_random/rng_current")
        assert run(vm, prompt, "head -c 64 /dev/hwrng | wc -c").strip() == "64"
        # virtio console: one of the hvc ttys (hvc0 is the SBI console)
        run(vm, prompt, "for t in /dev/hvc*; do echo to-$t > $t; done 2>/dev/null")
        assert re.search(r"to-/dev/hvc\d", hvc.read_text())
        # goldfish RTC: the host's time
        guest_time = int(run(vm, prompt, "date +%s").strip().splitlines()[-1])
        assert abs(guest_time - time.time()) < 60
        # UART input: a long typed line arrives whole (the FIFO refills as the guest reads)
        line = "x" * 200
        counted = run(vm, prompt, f"echo {line} | wc -c").strip().splitlines()[-1]
        assert counted == str(len(line) + 1)  # (ash echoes a long line wrapped: look last)
        vm.console.send("poweroff\n")
        assert vm.wait(CMD_TIMEOUT) == 0
    finally:
        if vm.is_running():
            vm.kill()
