"""``-gdb``/``-s`` and HMP ``gdbserver``: QEMU's device forms, one-line errors, and what
``gdbserver`` does while a stub already serves (QEMU 7.2 refuses; the old one keeps serving)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import kvmpy_env

from .conftest import GDBTEST, Rsp, free_port, wait_listening

pytestmark = pytest.mark.timeout(120)

MACHINE = ["-M", "virt", "-bios", "none", "-nographic", "-kernel", str(GDBTEST)]


def kvmpy(*args: str, stdin: bytes = b"", timeout: float = 60) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "kvmpy", *args], input=stdin,
                          capture_output=True, timeout=timeout, env=kvmpy_env(), check=False)
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "falling back to tcg" not in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("device", "message"), [
    ("foo", "kvmpy: -gdb foo: 'foo' is not a valid char driver"),
    ("tcp::1234x", "kvmpy: -gdb tcp::1234x: address resolution failed for :1234x: "
                   "Servname not supported for ai_socktype"),
    ("unix:", "kvmpy: -gdb unix:: Unable to parse FD number"),
    ("chardev:nope", "kvmpy: -gdb chardev:nope: chardev 'nope' not found"),
])
def test_bad_devices_are_one_line_errors(device: str, message: str) -> None:
    status, _, err = kvmpy(*MACHINE, "-S", "-gdb", device)
    assert status == 1
    assert error_line(err) == message


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        status, _, err = kvmpy(*MACHINE, "-S", "-gdb", f"tcp::{port}")
    assert status == 1
    assert error_line(err) == (f"kvmpy: -gdb tcp::{port}: Failed to bind socket to :{port}: "
                               "Address already in use")


def test_unix_socket_and_chardev_forms(tmp_path: Path) -> None:
    path = tmp_path / "gdb.sock"
    path2 = tmp_path / "chr.sock"
    for args, where in (
            (["-gdb", f"unix:{path},server=on,wait=off"], path),
            (["-chardev", f"socket,id=g,path={path2},server=on,wait=off", "-gdb", "chardev:g"],
             path2)):
        proc = subprocess.Popen([sys.executable, "-m", "kvmpy", *MACHINE, "-S", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=kvmpy_env())
        try:
            deadline = time.monotonic() + 30
            while not where.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(os.fspath(where))
            sock.sendall(Rsp.frame(b"qC"))
            data = b""
            while b"#" not in data:
                data += sock.recv(100)
            assert data.startswith(b"+$QC01#")
            sock.close()
        finally:
            proc.kill()
            proc.communicate()


def test_hmp_gdbserver() -> None:
    port, other = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmpy", *MACHINE, "-S", "-serial", "none", "-monitor", "stdio",
         "-gdb", f"tcp::{port}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=kvmpy_env())
    try:
        wait_listening(port, proc)
        commands = (f"gdbserver tcp::{other}\ngdbserver none\ngdbserver foo\n"
                    f"gdbserver tcp::{other}\n")
        assert proc.stdin is not None
        proc.stdin.write(commands.encode())
        proc.stdin.flush()
        wait_listening(other, proc)
        client = Rsp(other)
        assert client.ask("qC") == b"QC01"
        client.close()
        proc.stdin.write(b"quit\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = out.decode().replace("\r\n", "\n")
    assert (f"(qemu) gdbserver tcp::{other}\n"
            f"a gdbserver already runs on device 'tcp::{port}'\n"
            f"Could not open gdbserver on device 'tcp::{other}'\n"
            "(qemu) gdbserver none\nDisabled gdbserver\n"
            "(qemu) gdbserver foo\n'foo' is not a valid char driver\n"
            "Could not open gdbserver on device 'foo'\n"
            f"(qemu) gdbserver tcp::{other}\n"
            f"Waiting for gdb connection on device 'tcp::{other}'\n") in text
