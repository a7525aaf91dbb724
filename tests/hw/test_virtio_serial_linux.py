"""virtio-serial on PCI with Linux's driver, on kvmpy and on QEMU 7.2 with the same command
line: the guest finds a named port, writes through it to the host's chardev, reads what the
host sends, and QMP hears ``VSERPORT_CHANGE`` as the guest opens and closes the port."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.net.test_guest_network import guest, sh

__all__ = ["guest"]

PORT_NAME = "org.kvmpy.test.0"
FIND_PORT = ("for p in /sys/class/virtio-ports/*; do read -r n <$p/name; "
             f"[ \"$n\" = {PORT_NAME} ] && dev=/dev/${{p##*/}}; done; echo dev=$dev")


def _connect(path: Path, timeout: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("vmm", ["kvmpy", "qemu"])
def test_named_port_on_pci(vmm: str, guest: Any, tmp_path: Path) -> None:
    path = tmp_path / "port.sock"
    vm = guest("-chardev", f"socket,id=c0,path={path},server=on,wait=off",
               "-device", "virtio-serial-pci,id=vser0",
               "-device", f"virtserialport,id=channel0,chardev=c0,name={PORT_NAME}",
               vmm=vmm)
    host = _connect(path)
    host.settimeout(30)
    out = sh(vm, FIND_PORT)
    assert "dev=/dev/vport" in out, out
    assert sh(vm, "cat /sys/bus/pci/devices/*/device | sort").split() == \
        ["0x0008", "0x1003"]  # the host bridge and the transitional virtio-serial
    # The guest opens the port, writes, reads one line the host sends, closes.
    vm.console.send(f"{FIND_PORT} >/dev/null; (echo from-guest; read -r line; "
                    "echo got=$line >/dev/console) <>$dev >&0\n")
    event = vm.event_wait("VSERPORT_CHANGE", timeout=30)
    assert event["data"] == {"id": "channel0", "open": True}
    received = b""
    while b"\n" not in received:
        received += host.recv(100)
    assert received == b"from-guest\n"
    host.sendall(b"from-host\n")
    vm.console.expect("got=from-host")
    # Closing comes within QEMU's one-second event limit of the opening: it is held, not lost.
    event = vm.event_wait("VSERPORT_CHANGE", timeout=30)
    assert event["data"] == {"id": "channel0", "open": False}
    host.close()
