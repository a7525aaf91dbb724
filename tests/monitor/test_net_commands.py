"""``info network``, ``netdev_add``, ``netdev_del`` and ``set_link`` against QEMU 7.2: the
same command line and the same monitor commands give the same answers (HMP text and QMP
replies and errors)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..lifecycle.helpers import free_tcp_port, kvmpy_env, vmm_command, wait_for_socket

Session = Callable[..., list[Any]]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    """``session(vmm, args, steps)``: each step is ("hmp", line) or ("qmp", name, args);
    returns the HMP texts and the QMP replies (or error classes and texts), in order."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(vmm: str, args: list[str], steps: list[tuple[Any, ...]]) -> list[Any]:
        command = vmm_command(vmm)
        path = str(tmp_path / f"{vmm}-{len(procs)}.sock")
        proc = subprocess.Popen([*command, "-M", "virt", "-bios", "none", "-S", "-display",
                                 "none", "-serial", "none", "-monitor", "none", *args,
                                 "-qmp", f"unix:{path},server=on,wait=off"],
                                env=kvmpy_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_socket(path, proc)
        qmp = QEMUMonitorProtocol(path)
        qmp.connect()
        out: list[Any] = []
        try:
            for step in steps:
                if step[0] == "hmp":
                    reply = qmp.cmd_obj({"execute": "human-monitor-command",
                                         "arguments": {"command-line": step[1]}})
                    out.append(reply["return"].replace("\r\n", "\n"))
                else:
                    reply = qmp.cmd_obj({"execute": step[1], "arguments": step[2]})
                    error = reply.get("error")
                    out.append((error["class"], error["desc"]) if error else reply["return"])
            qmp.cmd_obj({"execute": "quit"})
        finally:
            with contextlib.suppress(EOFError):
                qmp.close()
        proc.wait(30)
        return out

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_backends_added_and_removed_as_qemu(session: Session) -> None:
    port, p1, p2 = free_tcp_port(), free_tcp_port(), free_tcp_port()
    args = ["-netdev", "user,id=u0,restrict=on",
            "-netdev", f"dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port={p1},"
                       f"remote.type=inet,remote.host=127.0.0.1,remote.port={p2}",
            "-netdev", f"stream,id=s0,server=on,addr.type=inet,addr.host=127.0.0.1,"
                       f"addr.port={port}"]
    steps: list[tuple[Any, ...]] = [
        ("hmp", "info network"),
        ("qmp", "netdev_add", {"type": "user", "id": "x1", "restrict": True}),
        ("hmp", "info network"),
        ("qmp", "netdev_add", {"type": "user", "id": "u0"}),
        ("qmp", "netdev_del", {"id": "x1"}),
        ("qmp", "netdev_del", {"id": "nope"}),
        ("qmp", "set_link", {"name": "nope", "up": False}),
        ("qmp", "set_link", {"name": "u0", "up": False}),
        ("hmp", "netdev_del nope"),
        ("hmp", "info network"),
    ]
    theirs = session("qemu", args, steps)
    ours = session("kvmpy", args, steps)
    assert ours == theirs
    assert theirs[0].splitlines() == [
        f"d0: index=0,type=dgram,udp=127.0.0.1:{p1}/127.0.0.1:{p2}",
        "s0: index=0,type=stream,",
        "u0: index=0,type=user,net=10.0.2.0,restrict=on"]


def test_unknown_type_and_missing_id(session: Session) -> None:
    steps: list[tuple[Any, ...]] = [
        ("qmp", "netdev_add", {"type": "nosuch", "id": "a"}),
        ("qmp", "netdev_add", {"type": "user"}),
    ]
    ours = session("kvmpy", [], steps)
    theirs = session("qemu", [], steps)
    assert [o[0] for o in ours] == [t[0] for t in theirs] == ["GenericError", "GenericError"]
    assert ours[1] == theirs[1]
