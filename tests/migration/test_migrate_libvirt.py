"""``virsh save`` and ``virsh restore`` of a running kvmpy domain (libvirt 9.0's private daemons
from ``tests/libvirt``): libvirt hands kvmpy a pipe with ``getfd`` and migrates to ``fd:``,
then restores with ``-incoming defer`` and ``migrate-incoming fd:N``; the guest runs on."""

from __future__ import annotations

import os
import select
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmpy import guests
from tests.libvirt.daemons import Libvirt, unavailable_reason, write_launcher

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Libvirt, Path]]:
    root = tmp_path_factory.mktemp("libvirt-migrate")
    guests.kernel_path()
    libvirt = Libvirt(root / "daemons")
    try:
        libvirt.start()
    except RuntimeError as exc:
        libvirt.stop()
        pytest.skip(f"libvirtd cannot start here: {exc}")
    try:
        yield libvirt, root
    finally:
        for name in libvirt.virsh("list", "--name", "--all", check=False).stdout.split():
            libvirt.virsh("destroy", name, check=False)
            libvirt.virsh("undefine", name, check=False)
        libvirt.stop()


def console_answers(libvirt: Libvirt, name: str, timeout: float = 120.0) -> None:
    """The guest's serial console (the pty libvirt reports) answers a shell command."""
    path = libvirt.virsh("ttyconsole", name).stdout.strip()
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        seen = b""
        deadline = time.monotonic() + timeout
        last_poke = 0.0
        while b"answer-42" not in seen:
            now = time.monotonic()
            assert now < deadline, seen[-400:]
            if now - last_poke > 3:  # still booting, or the prompt was printed already
                os.write(fd, b"echo answer-$((6*7))\r")
                last_poke = now
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                seen += os.read(fd, 4096)
    finally:
        os.close(fd)


def test_virsh_save_and_restore(daemons: tuple[Libvirt, Path]) -> None:
    libvirt, root = daemons
    emulator = write_launcher(root / "kvmpy-emulator")
    xml = root / "saved.xml"
    xml.write_text(f"""\
<domain type='qemu'>
  <name>saved</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='riscv64' machine='virt'>hvm</type>
    <kernel>{guests.kernel_path()}</kernel>
    <initrd>{guests.initrd_path()}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='pty'/>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
""")
    image = root / "saved.state"
    libvirt.virsh("define", str(xml))
    libvirt.virsh("start", "saved")
    time.sleep(2)
    libvirt.virsh("save", "saved", str(image))
    assert libvirt.virsh("domstate", "saved").stdout.strip() == "shut off"
    assert image.stat().st_size > 1 << 20
    libvirt.virsh("restore", str(image))
    assert libvirt.virsh("domstate", "--reason", "saved").stdout.strip() == \
        "running (restored)"
    info = libvirt.virsh("qemu-monitor-command", "saved", "--hmp", "info migrate").stdout
    assert "Migration status: completed" in info
    console_answers(libvirt, "saved")
    libvirt.virsh("destroy", "saved")
    libvirt.virsh("undefine", "saved")
