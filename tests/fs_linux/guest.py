"""The bundled Linux guest as a 9P client: boot it with exports attached, run shell commands on
its console, and build host trees and root file systems for it."""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.process import ProcessVM
from kvmpy.registry_init import load_types

BOOT_TIMEOUT = 180.0
CMD_TIMEOUT = 120.0
QEMU = shutil.which("qemu-system-riscv64")
MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000"


def skip_reason() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        if getattr(info.cls, "name", None) == "tcg":
            accel: Any = info.cls
            reason: str | None = accel.unavailable_reason()
            return None if reason is None else f"interpreter accelerator unavailable: {reason}"
    return "the tcg accelerator is not registered in this build"


def vmm_binary(vmm: str) -> tuple[list[str] | None, list[str]]:
    """(binary for ProcessVM, extra arguments) of ``kvmpy`` or ``qemu``."""
    if vmm == "qemu":
        if QEMU is None:
            pytest.skip("qemu-system-riscv64 (the oracle) is not installed")
        return [QEMU], []
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return None, ["-accel", "tcg"]


def export_args(device: str, fsdev_id: str, path: Path, tag: str, **options: str) -> list[str]:
    """``-fsdev local,...`` and the ``-device`` exporting it (``virtio-9p-pci`` or
    ``virtio-9p-device``)."""
    extra = "".join(f",{key}={value}" for key, value in options.items())
    security = "" if "security_model" in options else ",security_model=none"
    return ["-fsdev", f"local,id={fsdev_id},path={path}{security}{extra}",
            "-device", f"{device},fsdev={fsdev_id},mount_tag={tag}"]


def boot(vmm: str, args: Sequence[str]) -> ProcessVM:
    """The bundled guest at its shell prompt."""
    import kvmpy.guests as guests

    binary, extra = vmm_binary(vmm)
    vm = ProcessVM(["-M", "virt", "-m", "512M", "-smp", "2",
                    "-kernel", str(guests.kernel_path()),
                    "-initrd", str(guests.initrd_path()), "-append", "console=ttyS0",
                    *extra, *args], binary=binary)
    vm.launch()
    vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
    ok(vm, "dmesg -n 1")  # no kernel messages in the middle of an answer
    return vm


def sh(vm: ProcessVM, command: str, timeout: float = CMD_TIMEOUT) -> str:
    """``command``'s output (stdout and stderr) and its exit status as a last line
    ``status=N``, between markers the echoed command line cannot contain."""
    vm.console.send(f"echo @@$((6*7))@@; ( {command} ) 2>&1; echo status=$?; "
                    "echo @@$((6*8))@@\n")
    match = vm.console.expect(r"(?s)@@42@@\r?\n(.*?)@@48@@", timeout=timeout)
    return str(match.group(1)).replace("\r", "")


def ok(vm: ProcessVM, command: str, timeout: float = CMD_TIMEOUT) -> str:
    """``command``'s output; it must succeed."""
    out = sh(vm, command, timeout)
    body, _, status = out.rstrip("\n").rpartition("\n")
    assert status == "status=0", f"{command!r} failed:\n{out}"
    return body + "\n" if body else ""


def busybox_from_bundle(dest: Path) -> Path:
    """The static busybox of the bundled initramfs (a gzip newc cpio), written to ``dest``."""
    import kvmpy.guests as guests

    data = gzip.decompress(Path(guests.initrd_path()).read_bytes())
    pos = 0
    while pos + 110 <= len(data):
        head = data[pos:pos + 110]
        if head[:6] not in (b"070701", b"070702"):
            break
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110:name_end - 1].decode()
        body = (name_end + 3) & ~3
        if name == "trailer!!!":
            break
        if name in ("bin/busybox", "./bin/busybox"):
            dest.write_bytes(data[body:body + size])
            dest.chmod(0o755)
            return dest
        pos = (body + size + 3) & ~3
    raise AssertionError("no bin/busybox in the bundled initramfs")
