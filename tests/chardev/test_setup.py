"""From VMConfig to open chardevs: labels, muxes, frontends, monitors, and clean failure."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kvmpy.chardev import MuxChardev, MuxFrontend, PtyChardev, SocketChardev, create_chardevs
from kvmpy.chardev.setup import ChardevBuilder, make_monitor, open_backends
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError


def test_labels_and_frontends(tmp_path: Path) -> None:
    qmp_path = str(tmp_path / "qmp.sock")
    config = VMConfig(serial=["null", f"file:{tmp_path / 'out.txt'}"],
                      monitor=["null"],
                      qmp=[(f"unix:{qmp_path},server=on,wait=off", True)])
    made = create_chardevs(config)
    try:
        assert list(made.chardevs) == ["serial0", "serial1", "compat_monitor0",
                                       "compat_monitor1"]
        assert made.serials == [made.chardevs["serial0"], made.chardevs["serial1"]]
        assert [(m.mode, m.pretty, m.label) for m in made.monitors] == [
            ("readline", False, "compat_monitor0"), ("control", True, "compat_monitor1")]
        qmp = made.chardevs["compat_monitor1"]
        assert isinstance(qmp, SocketChardev)
        assert qmp.filename == f"disconnected:unix:{qmp_path},server=on"
        assert made.serials[1] is not None
        made.serials[1].write(b"to the file")
    finally:
        for chardev in made.chardevs.values():
            chardev.close()
    assert (tmp_path / "out.txt").read_bytes() == b"to the file"
    assert not os.path.exists(qmp_path)


def test_mon_prefix_shares_the_backend_with_a_monitor(tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    made = create_chardevs(VMConfig(serial=[f"mon:unix:{path},server=on,wait=off"]))
    try:
        mux = made.chardevs["serial0"]
        assert isinstance(mux, MuxChardev)
        serial, monitor = made.serials[0], made.monitors[0].chardev
        assert isinstance(serial, MuxFrontend) and isinstance(monitor, MuxFrontend)
        assert (serial.index, monitor.index) == (0, 1) and mux.focus == 0
        assert made.monitors[0].mode == "readline"
    finally:
        mux.close()


def test_chardev_with_mux_on_shared_by_serial_and_mon() -> None:
    config = VMConfig(chardevs=[OptionSpec("ringbuf", {"id": "c", "mux": "on"})],
                      serial=["chardev:c"], mon=[OptionSpec("c", {"mode": "control"})])
    made = create_chardevs(config)
    mux = made.chardevs["c"]
    assert isinstance(mux, MuxChardev) and len(mux.frontends) == 2
    assert made.monitors[0].mode == "control"


def test_a_plain_chardev_serves_one_frontend() -> None:
    config = VMConfig(chardevs=[OptionSpec("null", {"id": "c"})],
                      serial=["chardev:c", "chardev:c"])
    with pytest.raises(ConfigError) as info:
        create_chardevs(config)
    assert info.value.option == "-serial chardev:c"
    assert str(info.value) == "Device 'c' is in use"


def test_unknown_chardev_reference() -> None:
    with pytest.raises(ConfigError) as info:
        create_chardevs(VMConfig(serial=["chardev:nope"]))
    assert (info.value.option, str(info.value)) == (
        "-serial chardev:nope", "could not connect serial device to character backend "
                                "'chardev:nope'")


def test_failure_closes_what_was_opened(capsys: pytest.CaptureFixture[str]) -> None:
    config = VMConfig(serial=["pty", "file:/nonexistent/dir/x"])
    opened: list[PtyChardev] = []
    original = PtyChardev.open

    def spy(self: PtyChardev) -> None:
        original(self)
        opened.append(self)

    PtyChardev.open = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(ConfigError) as info:
            create_chardevs(config)
    finally:
        PtyChardev.open = original  # type: ignore[method-assign]
    assert info.value.option == "-serial file:/nonexistent/dir/x"
    assert opened and opened[0].fileno() is None  # closed again
    assert "(label serial0)" in capsys.readouterr().err


def test_stdio_refused_with_daemonize() -> None:
    with pytest.raises(ConfigError, match="cannot use stdio with -daemonize"):
        create_chardevs(VMConfig(serial=["stdio"], daemonize=True))


def test_duplicate_chardev_id() -> None:
    builder = ChardevBuilder()
    builder.add_chardev(OptionSpec("null", {"id": "a"}, "-chardev null,id=a"))
    with pytest.raises(ConfigError) as info:
        builder.add_chardev(OptionSpec("null", {"id": "a"}))  # made by a library: no text
    assert str(info.value) == "Duplicate ID 'a' for chardev"
    assert info.value.option == "-chardev null,id=a"


class FakeSystem:
    def __init__(self, config: VMConfig) -> None:
        self.config = config
        self.shutdowns: list[tuple[str, bool]] = []

    def request_shutdown(self, reason: str, guest: bool) -> None:
        self.shutdowns.append((reason, guest))


def test_open_backends_builds_monitors_and_wires_c_a_x(tmp_path: Path) -> None:
    config = VMConfig(chardevs=[OptionSpec("ringbuf", {"id": "con", "mux": "on"})],
                      serial=["chardev:con"], mon=[OptionSpec("con", {})],
                      qmp=[("null", False)])
    system = FakeSystem(config)
    chardevs, serials, monitors = open_backends(system)  # type: ignore[arg-type]
    assert len(serials) == 1 and len(monitors) == 2
    for monitor, spec in zip(monitors, create_chardevs(config).monitors, strict=True):
        built = make_monitor(system, spec)  # type: ignore[arg-type]
        assert type(monitor) is type(built)
    mux = chardevs["con"]
    assert isinstance(mux, MuxChardev) and mux.backend_chr is not None
    ring: Any = mux.backend_chr
    ring.write_input(b"\x01x")
    assert system.shutdowns == [("host-qmp-quit", False)]


def test_socket_client_spec_from_the_command_line(tmp_path: Path) -> None:
    path = str(tmp_path / "peer.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    made = create_chardevs(VMConfig(serial=[f"unix:{path}"]))
    peer, _ = listener.accept()
    serial = made.serials[0]
    assert serial is not None and serial.connected
    serial.write(b"hi")
    assert peer.recv(2) == b"hi"
    peer.close()
    listener.close()
    serial.close()
