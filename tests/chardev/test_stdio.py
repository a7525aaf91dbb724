"""stdio on a real terminal: raw mode while open, the terminal restored on every way out.

Each case runs a child process whose controlling terminal is a pty held by the test, so the
test sees the terminal modes and can type Ctrl-C as a user would.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from ..support import kvmpy_env

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, select, sys, time
from kvmpy import qom
import kvmpy.chardev

mode, allow_signal = sys.argv[1], sys.argv[2]
chardev = qom.object_new("chardev-stdio", {"id": "s", "signal": allow_signal})
chardev.open()
got = []
chardev.set_handlers(got.append)
os.write(1, b"READY\n")
if mode == "echo":
    select.select([0], [], [], 10)
    chardev.on_readable()
    os.write(1, ("GOT " + b"".join(got).hex() + "\n").encode())
    chardev.close()
    os.write(1, b"CLOSED\n")
    sys.stdin.readline()
elif mode == "exception":
    raise RuntimeError("boom")
elif mode == "exit":
    sys.exit(3)
else:
    while True:
        select.select([0], [], [], 0.1)
"""


class Terminal:
    """A pty whose terminal side is a child's controlling terminal."""

    def __init__(self, mode: str, allow_signal: str, script: str = CHILD) -> None:
        self.master, self.slave = os.openpty()
        self.initial = termios.tcgetattr(self.slave)
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)

        def make_controlling() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = kvmpy_env()
        self.proc = subprocess.Popen(  # preexec_fn: TIOCSCTTY in the child
            [sys.executable, "-c", script, mode, allow_signal], stdin=self.slave,
            stdout=self.slave, stderr=self.slave, preexec_fn=make_controlling, env=env)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def wait_for(self, text: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen; output: {self.output!r}")
            time.sleep(0.02)

    def attrs(self) -> list[object]:
        return termios.tcgetattr(self.slave)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 20.0) -> int:
        status = self.proc.wait(timeout)
        os.close(self.slave)
        os.close(self.master)
        return status


def lflag(attrs: list[object]) -> int:
    value = attrs[3]
    assert isinstance(value, int)
    return value


def test_raw_mode_with_signal_off_passes_ctrl_c_to_the_guest() -> None:
    term = Terminal("echo", "off")
    term.wait_for(b"READY")
    raw = lflag(term.attrs())
    assert not raw & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
    iflag = term.attrs()[0]
    assert isinstance(iflag, int) and not iflag & (termios.ICRNL | termios.IXON)
    term.type(b"\x03")
    term.wait_for(b"GOT 03")
    term.wait_for(b"CLOSED")
    assert term.attrs() == term.initial
    term.type(b"\n")
    assert term.finish() == 0


def test_signal_on_keeps_ctrl_c_as_sigint_and_restores_the_terminal() -> None:
    term = Terminal("wait", "on")
    term.wait_for(b"READY")
    assert lflag(term.attrs()) & termios.ISIG
    assert not lflag(term.attrs()) & termios.ECHO
    term.type(b"\x03")
    status = term.proc.wait(20)
    assert status != 0  # KeyboardInterrupt
    assert term.attrs() == term.initial
    term.finish()


@pytest.mark.parametrize(("mode", "expected"), [("exception", 1), ("exit", 3)])
def test_terminal_restored_on_error_and_exit(mode: str, expected: int) -> None:
    term = Terminal(mode, "off")
    term.wait_for(b"READY")
    status = term.proc.wait(20)
    assert status == expected
    assert term.attrs() == term.initial
    term.finish()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_terminal_restored_on_fatal_signals(signum: int) -> None:
    term = Terminal("wait", "off")
    term.wait_for(b"READY")
    assert not lflag(term.attrs()) & termios.ECHO
    term.proc.send_signal(signum)
    status = term.proc.wait(20)
    assert status == -signum  # still dies by that signal
    assert term.attrs() == term.initial
    term.finish()


MUX_CHILD = r"""
import os, select, sys
from kvmpy.chardev import create_chardevs
from kvmpy.config import VMConfig

class Host:
    readers = {}
    def add_reader(self, fd, cb): self.readers[fd] = cb
    def remove_reader(self, fd): self.readers.pop(fd, None)

def done():
    made.chardevs["serial0"].close()
    os.write(1, b"EXITED\n")
    sys.exit(0)

made = create_chardevs(VMConfig(serial=["mon:stdio"]), on_exit=done)
serial, monitor = made.serials[0], made.monitors[0].chardev
serial.set_handlers(lambda d: serial.write(b"S:" + d.hex().encode() + b"\n"))
monitor.set_handlers(lambda d: monitor.write(b"M:" + d.hex().encode() + b"\n"),
                     None, lambda e: monitor.write(b"E:" + e.encode() + b"\n"))
host = Host()
made.chardevs["serial0"].attach_loop(host)
os.write(1, b"READY\n")
while True:
    ready, _, _ = select.select(list(host.readers), [], [], 10)
    for fd in ready:
        host.readers[fd]()
"""


def test_mon_stdio_on_a_terminal() -> None:
    """``-nographic``'s ``mon:stdio``: Ctrl-C reaches the guest, Ctrl-A c reaches the monitor,
    Ctrl-A x ends, and the terminal comes back as it was."""
    term = Terminal("", "", MUX_CHILD)
    term.wait_for(b"READY")
    assert not lflag(term.attrs()) & (termios.ISIG | termios.ECHO)
    term.type(b"a\x03")
    term.wait_for(b"S:6103")
    term.type(b"\x01c")
    term.wait_for(b"E:mux-in")
    term.type(b"q")
    term.wait_for(b"M:71")
    term.type(b"\x01h")
    term.wait_for(b"C-a c    switch between console and monitor")
    term.type(b"\x01x")
    term.wait_for(b"kvmpy: Terminated")
    term.wait_for(b"EXITED")
    assert term.proc.wait(20) == 0
    assert term.attrs() == term.initial
    term.finish()
