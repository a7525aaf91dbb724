"""The remote protocol on a raw socket: kvmpy's answers against QEMU 7.2's for the same packets,
and bad input (malformed, bad checksums, oversized, unknown, clients that vanish) that must
leave the VM as it was and kvmpy listening."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from .conftest import GDBTEST, Rsp, needs_qemu, vmm

pytestmark = pytest.mark.timeout(300)

MACHINE = ["-M", "virt", "-smp", "2", "-bios", "none", "-nographic", "-kernel", str(GDBTEST)]


def symbol(name: str) -> int:
    with GDBTEST.open("rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        return int(table.get_symbol_by_name(name)[0]["st_value"])


COMPUTE = symbol("compute")
COUNTER = symbol("counter")
ADD = symbol("add")

# Packets whose answers must be QEMU's, in order (a session from reset: registers, memory,
# threads, a breakpoint, single steps, a watchpoint, a step into a trap).
DIFFERENTIAL = [
    "qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+",
    "p20",  # no target description read yet: empty
    "qXfer:features:read:target.xml:0,ffb",
    "qXfer:features:read:riscv-64bit-virtual.xml:0,ffb",
    "qXfer:features:read:riscv-csr.xml:0,200",
    "qXfer:features:read:nosuch.xml:0,ffb",
    "?", "qfThreadInfo", "qsThreadInfo", "qsThreadInfo", "qC", "qAttached", "qAttached:1",
    "qThreadExtraInfo,p1.1", "qThreadExtraInfo,p1.2",
    "Hgp1.2", "p20", "Hgp1.1", "Hgp1.3", "Hc-1", "Tp1.2", "Tp1.3",
    "g", "p20", "p41", "p42", "p166", "p1000", "pzz", "vCont?",
    "qqemu.Supported", "qqemu.PhyMemMode", "Qqemu.PhyMemMode:1", "qqemu.PhyMemMode",
    "m80000000,10", "Qqemu.PhyMemMode:0", "m80000000,10", "m0,4", "m80000000,2001",
    f"M{COUNTER:x},8:0102030405060708", f"m{COUNTER:x},8", f"M{COUNTER:x},8:00",
    f"M{COUNTER:x},8:0000000000000000",
    "P20,0000008000000000", "p20", "P20,0010000000000000",
    f"Z0,{COMPUTE:x},2", "vCont;c", "p20", f"z0,{COMPUTE:x},2", f"z0,{COMPUTE:x},2",
    "vCont;s:p1.1", "p20", "s", "p20",
    f"Z2,{COUNTER:x},8", "c", "p20", f"z2,{COUNTER:x},8", f"z2,{COUNTER:x},8",
    f"Z3,{COUNTER:x},8", f"z3,{COUNTER:x},8", f"Z4,{COUNTER:x},8", f"z4,{COUNTER:x},8",
    "Z2,1000,0", "Z9,1000,2", "Z0", "Z0,zz,2",
    # a step into a trap: an ecall at pc, mtvec at add(): one step ends at the handler
    f"P{0x42 + 0x305:x},{ADD.to_bytes(8, 'little').hex()}", "p20",
    "qRcmd,696e666f20737461747573", "qRcmd,696", "jfoo", "qfoo", "Qfoo", "vfoo", "!",
]


def run_packets(which: str, packets: list[str]) -> list[bytes]:
    answers: list[bytes] = []
    with vmm(which, MACHINE) as v:
        client = Rsp(v.port)
        for packet in packets:
            answers.append(client.ask(packet))
            if packet.startswith("qRcmd,696e") and answers[-1].startswith(b"O"):
                answers.append(client.packet())
            if packet.startswith(f"P{0x42 + 0x305:x}"):
                pc = int.from_bytes(bytes.fromhex(client.ask("p20").decode()), "little")
                answers.append(client.ask(f"M{pc:x},4:73000000"))  # ecall
                answers.append(client.ask("s"))
                answers.append(client.ask("p20"))
                answers.append(client.ask(f"p{0x42 + 0x342:x}"))  # mcause
        client.close()
    return answers


@needs_qemu
def test_answers_match_qemu() -> None:
    kvmpy_answers = run_packets("kvmpy", DIFFERENTIAL)
    qemu_answers = run_packets("qemu", DIFFERENTIAL)
    # what differs on purpose: kvmpy announces a larger PacketSize and QStartNoAckMode
    assert qemu_answers[0] == b"PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+"
    assert kvmpy_answers[0] == (b"PacketSize=4000;qXfer:features:read+;vContSupported+;"
                                b"multiprocess+;QStartNoAckMode+")
    # "m80000000,2001": over QEMU's 0x800-byte read limit, within kvmpy's 0x2000: both read
    # or refuse by their own PacketSize
    limit = DIFFERENTIAL.index("m80000000,2001")
    assert qemu_answers[limit] == b"E22" and kvmpy_answers[limit] == b"E22"
    for i, (mine, theirs) in enumerate(zip(kvmpy_answers[1:], qemu_answers[1:], strict=True)):
        assert mine == theirs, f"answer {i + 1}: kvmpy {mine!r}, QEMU {theirs!r}"


def test_step_into_a_trap_stops_at_the_handler() -> None:
    """One step of an ecall: the trap is taken and the step ends at mtvec, as in QEMU."""
    answers = run_packets("kvmpy", DIFFERENTIAL)
    i = DIFFERENTIAL.index(f"P{0x42 + 0x305:x},{ADD.to_bytes(8, 'little').hex()}") + 1
    assert answers[i:i + 4] == [b"OK", b"T05thread:p01.01;",
                                ADD.to_bytes(8, "little").hex().encode(),
                                (11).to_bytes(8, "little").hex().encode()]


@pytest.fixture
def kvmpy_vm():  # type: ignore[no-untyped-def]
    with vmm("kvmpy", MACHINE) as v:
        yield v


def test_no_ack_mode_and_watchpoint_reply(kvmpy_vm) -> None:  # type: ignore[no-untyped-def]
    client = Rsp(kvmpy_vm.port)
    assert client.ask("QStartNoAckMode") == b"OK"
    client.send_raw(Rsp.frame(b"qC"))
    time.sleep(0.2)
    data = client.sock.recv(4096)
    assert data.startswith(b"$QC01#")  # no '+' in front any more
    assert client.ask(f"Z2,{COUNTER:x},8") == b"OK"
    assert client.ask("c") == f"T05thread:01;watch:{COUNTER:016x};".encode()
    assert client.ask(f"Z3,{COUNTER:x},8") == b"OK"
    client.close()


def test_bad_input_is_answered_and_the_vm_stays(kvmpy_vm) -> None:  # type: ignore[no-untyped-def]
    client = Rsp(kvmpy_vm.port)
    pc = client.ask("g")[32 * 16:33 * 16]
    client.send_raw(b"$g#00")  # bad checksum: '-', not handled
    assert client.sock.recv(1) == b"-"
    client.send_raw(b"$g#zz")
    assert client.sock.recv(1) == b"-"
    client.send_raw(b"noise+++\x7f")  # bytes between packets are ignored
    client.send_raw(Rsp.frame(b"m" + b"0" * 0x5000))  # oversized: dropped
    assert client.ask("qC") == b"QC01"
    for packet in ["", "J", "qNoSuchQuery", "QNoSuchSet", "vNoSuch", "Z", "z0,1", "Hx",
                   "H", "T", "Tzz", "m", "mzz,4", "m1,", "M1,2", "M1,2:zz", "X1,2", "Xzz:",
                   "Gzz", "P", "Pzz", "qXfer:features:read:target.xml:zz", "qRcmd,6",
                   "vCont;x", "vCont;c:p9.9", "vAttach;zz",
                   "qThreadExtraInfo,zz", "\x80\xff"]:
        answer = client.ask(packet.encode("latin-1"))
        assert answer in (b"", b"OK") or re.fullmatch(rb"E[0-9a-f]{2}", answer), \
            (packet, answer)
    assert client.ask("g")[32 * 16:33 * 16] == pc
    client.ask("qXfer:features:read:target.xml:0,ffb")
    assert client.ask("p" + "f" * 40) == b"E14"
    # run-length encoded and escaped packets as gdb may send them
    plain = client.ask("m80000000,4")
    client.send_raw(Rsp.frame(b'm80*"0,4'))  # '0' and 5 more
    assert client.packet() == plain
    assert client.ask(b"X80001000,4:}\x03}\x04}]}\x0a") == b"OK"
    assert client.ask("m80001000,4") == b"23247d2a"
    client.close()
    # a client that disconnects mid-step: the VM stays paused, kvmpy listens on
    client = Rsp(kvmpy_vm.port)
    client.send_raw(Rsp.frame(b"vCont;s:1"))
    client.close()
    client = Rsp(kvmpy_vm.port)
    assert client.ask("?") == b"T05thread:01;"
    assert client.ask("qRcmd," + b"info status".hex()) == \
        b"O" + b"VM status: paused (debug)\r\n".hex().encode()
    client.close()
    assert kvmpy_vm.proc.poll() is None


def test_ctrl_c_stops_a_running_vm(kvmpy_vm) -> None:  # type: ignore[no-untyped-def]
    client = Rsp(kvmpy_vm.port)
    assert client.ask("m80000000,4") != b"6f000000"
    assert client.ask("M80000000,4:6f000000") == b"OK"  # j . at the entry: it runs forever
    client.send_raw(Rsp.frame(b"vCont;c"))
    time.sleep(0.3)
    client.send_raw(b"\x03")
    assert client.packet() == b"T02thread:01;"
    # a client that leaves while the VM runs: it runs on; the next one stops it again
    client.send_raw(Rsp.frame(b"c"))
    client.close()
    client = Rsp(kvmpy_vm.port)
    assert client.ask("qRcmd," + b"info status".hex()) == \
        b"O" + b"VM status: paused\r\n".hex().encode()
    assert client.packet() == b"OK"
    client.close()


def test_kill_ends_kvmpy(kvmpy_vm) -> None:  # type: ignore[no-untyped-def]
    client = Rsp(kvmpy_vm.port)
    client.send_raw(Rsp.frame(b"k"))
    status, _, err = kvmpy_vm.finish(30)
    assert status == 0
    assert "Terminated via GDBstub" in err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", kvmpy_vm.port), 1).close()


class Qmp:
    """A minimal QMP client on a unix socket: commands and the events seen meanwhile."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.events: list[str] = []
        json.loads(self.file.readline())  # greeting
        self.command("qmp_capabilities")

    def command(self, name: str) -> dict[str, object]:
        self.file.write(json.dumps({"execute": name}).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                self.events.append(reply["event"])
            else:
                return dict(reply["return"])


def test_gdb_stops_are_vm_stops(tmp_path: Path) -> None:
    """A breakpoint stops the whole VM in QEMU's ``debug`` run state, with QMP's events."""
    path = tmp_path / "qmp.sock"
    with vmm("kvmpy", [*MACHINE, "-qmp", f"unix:{path},server=on,wait=off"]) as v:
        qmp = Qmp(str(path))
        assert qmp.command("query-status")["status"] == "prelaunch"
        client = Rsp(v.port)
        assert client.ask(f"Z0,{COMPUTE:x},2") == b"OK"
        assert client.ask("c") == b"T05thread:01;"
        assert qmp.command("query-status") == {"status": "debug", "singlestep": False,
                                               "running": False}
        assert client.ask("s") == b"T05thread:01;"
        assert qmp.command("query-status")["status"] == "debug"
        assert qmp.events == ["RESUME", "STOP", "RESUME", "STOP"]
        client.close()
