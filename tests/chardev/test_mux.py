"""The Ctrl-A multiplexer: one backend, a serial frontend and a monitor frontend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.chardev import (
    CHR_EVENT_BREAK,
    CHR_EVENT_MUX_IN,
    CHR_EVENT_MUX_OUT,
    MuxChardev,
    RingbufChardev,
)
from kvmpy.errors import ConfigError

HELP = (b"\n\rC-a h    print this help\n\rC-a x    exit emulator\n\r"
        b"C-a s    save disk data back to file (if -snapshot)\n\r"
        b"C-a t    toggle console timestamps\n\rC-a b    send break (magic sysrq)\n\r"
        b"C-a c    switch between console and monitor\n\rC-a C-a  sends C-a\n\r")


class Setup:
    def __init__(self, make_frontend: Callable[[], Any]) -> None:
        self.ring: RingbufChardev = qom.object_new("chardev-ringbuf", {"id": "serial0"})
        self.ring.open()
        self.exits = 0
        self.switches: list[int] = []
        self.mux: MuxChardev = qom.object_new("chardev-mux", {"id": "serial0"},
                                              on_exit=self.on_exit,
                                              on_switch=self.switches.append)
        self.mux.set_backend(self.ring)
        self.mux.open()
        self.serial = make_frontend()
        self.monitor = make_frontend()
        self.serial_chr = self.mux.add_frontend()
        self.monitor_chr = self.mux.add_frontend()
        self.serial_chr.set_handlers(self.serial.receive, self.serial.can_receive,
                                     self.serial.event)
        self.monitor_chr.set_handlers(self.monitor.receive, self.monitor.can_receive,
                                      self.monitor.event)

    def on_exit(self) -> None:
        self.exits += 1

    def type(self, data: bytes) -> None:
        self.ring.write_input(data)


@pytest.fixture
def setup(make_frontend: Callable[[], Any]) -> Setup:
    return Setup(make_frontend)


def test_frontends_learn_focus_and_connection_when_attaching(setup: Setup) -> None:
    assert setup.serial.events == []
    assert setup.monitor.events == [CHR_EVENT_MUX_OUT]
    assert setup.mux.focus == 0 and setup.monitor_chr.connected


def test_input_goes_to_the_focused_frontend(setup: Setup) -> None:
    setup.type(b"root\r")
    assert setup.serial.data == b"root\r" and setup.monitor.data == b""


def test_c_a_c_switches_between_serial_and_monitor(setup: Setup) -> None:
    setup.type(b"ab\x01cinfo status\r")
    assert setup.serial.data == b"ab"
    assert setup.monitor.data == b"info status\r"
    assert setup.serial.events[-1] == CHR_EVENT_MUX_OUT
    assert setup.monitor.events[-1] == CHR_EVENT_MUX_IN
    setup.type(b"\x01c")
    setup.type(b"x")
    assert setup.serial.data == b"abx"
    assert setup.switches == [1, 0]


def test_escape_split_across_reads(setup: Setup) -> None:
    setup.type(b"\x01")
    setup.type(b"c")
    setup.type(b"q")
    assert setup.monitor.data == b"q" and setup.serial.data == b""


@pytest.mark.parametrize("key", [b"a", b"\x01"])
def test_c_a_a_sends_c_a(setup: Setup, key: bytes) -> None:
    setup.type(b"\x01" + key + b"z")
    assert setup.serial.data == b"\x01z"


def test_c_a_h_prints_the_key_help(setup: Setup) -> None:
    setup.type(b"\x01h")
    assert setup.ring.read() == HELP
    assert setup.serial.data == b""


def test_c_a_x_terminates(setup: Setup) -> None:
    setup.type(b"\x01x")
    assert setup.ring.read() == b"kvmpy: Terminated\n\r"
    assert setup.exits == 1


def test_c_a_b_sends_a_break_to_the_focused_frontend(setup: Setup) -> None:
    setup.type(b"\x01b")
    assert setup.serial.events[-1] == CHR_EVENT_BREAK
    assert CHR_EVENT_BREAK not in setup.monitor.events


def test_unknown_escape_keys_are_swallowed(setup: Setup) -> None:
    setup.type(b"\x01s\x01zok")
    assert setup.serial.data == b"ok" and setup.ring.read() == b""


def test_output_from_every_frontend_reaches_the_backend(setup: Setup) -> None:
    setup.serial_chr.write(b"guest says hi\n")
    setup.monitor_chr.write(b"(qemu) ")
    assert setup.ring.read() == b"guest says hi\n(qemu) "


def test_c_a_t_timestamps_output_lines(setup: Setup) -> None:
    now = [100.0]
    setup.mux._clock = lambda: now[0]
    setup.type(b"\x01t")
    setup.serial_chr.write(b"first line\n")  # the line in progress gets no stamp
    now[0] = 101.0  # the clock starts at the first stamp
    setup.serial_chr.write(b"second\n")
    now[0] = 101.0 + 3723.456
    setup.serial_chr.write(b"third")
    assert setup.ring.read() == (b"first line\n[00:00:00.000] second\n"
                                 b"[01:02:03.456] third")
    setup.type(b"\x01t")
    setup.serial_chr.write(b"\nplain\n")
    assert setup.ring.read() == b"\nplain\n"


def test_input_waits_for_a_busy_frontend(setup: Setup) -> None:
    setup.serial.room = 2
    setup.type(b"hello")
    assert setup.serial.data == b"he"
    setup.serial.room = 10
    setup.serial_chr.accept_input()
    assert setup.serial.data == b"hello"


def test_at_most_four_frontends(make_frontend: Callable[[], Any]) -> None:
    mux: MuxChardev = qom.object_new("chardev-mux", {"id": "m"})
    for _ in range(4):
        mux.add_frontend()
    with pytest.raises(ConfigError, match="Too many uses of multiplexed chardev 'm'"):
        mux.add_frontend()
