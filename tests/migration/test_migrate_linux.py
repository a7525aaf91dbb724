"""Live migration of the bundled Linux guest between two kvmpy processes, over TCP (loopback)
and over a unix socket, while a shell loop in the guest writes a tmpfs file without pause.

The destination is started with ``-S`` so that, once the migration is in, both sides are
stopped at the same guest instant: their whole RAM must be equal byte for byte (a page the
dirty log missed would differ).  Then the destination runs on: the writer's log is intact
(every line the next number), the loop still writes, the shell answers.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import kvmpy
from kvmpy import guests
from kvmpy.process import ProcessVM

BOOT_TIMEOUT = 180.0
PROMPT = re.escape(guests.PROMPT)
RAM_BASE = 0x8000_0000
RAM_SIZE = 128 << 20
WRITER = "i=0; while true; do i=$((i+1)); echo $i >> /tmp/log; done &\n"
CHECK = "echo log-$(awk 'NR!=$1{print \"broken-at-\" NR; exit} END{print NR}' /tmp/log)-end\n"


@pytest.fixture(autouse=True)
def _this_kvmpy(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = str(Path(kvmpy.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (parent, os.environ.get("PYTHONPATH")) if p))


def linux() -> list[str]:
    return ["-M", "virt", "-accel", "tcg", "-m", "128M", "-bios", "builtin",
            "-kernel", str(guests.kernel_path()), "-initrd", str(guests.initrd_path()),
            "-append", "console=ttyS0"]


def guest_check(vm: ProcessVM) -> int:
    """Lines in the writer's log, which must be 1, 2, 3, ... throughout."""
    vm.console.send(CHECK)
    match = vm.console.expect(r"log-([\w-]+?)-end", timeout=60)
    assert match.group(1).isdigit(), match.group(0)
    return int(match.group(1))


def ram(vm: ProcessVM) -> bytes:
    return vm.memory.read(RAM_BASE, RAM_SIZE)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_live_migration_while_the_guest_writes(transport: str, tmp_path: Path) -> None:
    if transport == "tcp":
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        uri = f"tcp:127.0.0.1:{port}"
    else:
        uri = f"unix:{tmp_path / 'migration.sock'}"
    with ProcessVM(linux()) as src, ProcessVM([*linux(), "-S", "-incoming", uri]) as dst:
        src.console.expect(PROMPT, timeout=BOOT_TIMEOUT)
        src.console.send(WRITER)
        src.console.expect(PROMPT, timeout=30)
        lines_before = guest_check(src)
        time.sleep(1.0)
        src.qmp("migrate-set-capabilities", capabilities=[{"capability": "events",
                                                           "state": True}])
        info = src.migrate(uri, timeout=300)
        assert info["status"] == "completed", info
        assert src.status == "postmigrate"
        deadline = time.monotonic() + 60
        while dst.status != "paused":
            assert time.monotonic() < deadline, dst.status
            time.sleep(0.05)
        assert ram(src) == ram(dst)  # the same guest instant on both sides
        dst.resume()
        lines_after = guest_check(dst)
        assert lines_after > lines_before
        time.sleep(0.5)
        assert guest_check(dst) > lines_after  # the writer goes on
        dst.console.send("echo answer-$((6*7))\n")
        dst.console.expect("answer-42", timeout=30)
