"""An accelerator without guest debugging (RISC-V KVM in Linux 6.1 has no KVM_SET_GUEST_DEBUG):
breakpoints, watchpoints and steps are refused with an error reply and one line on stderr,
while registers and memory work.  The accelerator here is the interpreter with its debug entry
points hidden, registered in a child process only (``-accel nodebug``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import kvmpy_env

from .conftest import GDBTEST, Rsp, free_port, wait_listening

pytestmark = pytest.mark.timeout(120)

CHILD = """
import sys
from kvmpy.accel.tcg.accel import TcgAccel
from kvmpy.qom import register_type

@register_type("nodebug-accel", "accel", description="tcg without guest debugging")
class NoDebug(TcgAccel):
    name = "nodebug"
    set_breakpoints = None
    set_watchpoints = None

from kvmpy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_debug_requests_are_refused_and_said() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "-M", "virt", "-bios", "none", "-nographic", "-kernel",
         str(GDBTEST), "-accel", "nodebug", "-S", "-gdb", f"tcp::{port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kvmpy_env())
    try:
        wait_listening(port, proc)
        client = Rsp(port)
        client.ask("qXfer:features:read:target.xml:0,ffb")
        assert client.ask("Z0,80000000,2") == b"E22"
        assert client.ask("Z1,80000000,2") == b"E22"
        assert client.ask("Z2,80000000,8") == b"E22"
        client.send_raw(Rsp.frame(b"s"))
        message = client.packet()
        assert message.startswith(b"O")
        assert b"KVM_SET_GUEST_DEBUG" in bytes.fromhex(message[1:].decode())
        assert client.packet() == b"T02thread:01;"  # not a finished step
        assert client.ask("p20") == (0x1000).to_bytes(8, "little").hex().encode()
        assert client.ask("P20=0000008000000000") == b"OK"
        assert client.ask("p20") == (0x80000000).to_bytes(8, "little").hex().encode()
        assert client.ask("m80000000,4") == GDBTEST_ENTRY
        client.send_raw(Rsp.frame(b"k"))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.decode().splitlines()
    assert lines.count("kvmpy: gdbstub: breakpoints, watchpoints and single-step need "
                       "KVM_SET_GUEST_DEBUG, which this accelerator does not provide") == 1


def _entry_bytes() -> bytes:
    from elftools.elf.elffile import ELFFile

    with GDBTEST.open("rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        return text.data()[:4].hex().encode()


GDBTEST_ENTRY = _entry_bytes()
