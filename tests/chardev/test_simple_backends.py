"""file, null, ringbuf and pty backends, against the real files and terminals."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.chardev import FileChardev, NullChardev, PtyChardev, RingbufChardev
from kvmpy.errors import ConfigError


def test_null_discards_output_and_logs_it(tmp_path: Path) -> None:
    log = tmp_path / "null.log"
    null: NullChardev = qom.object_new("chardev-null", {"id": "n", "logfile": str(log)})
    null.open()
    assert null.write(b"hello") == 5
    assert null.fileno() is None
    null.close()
    assert log.read_bytes() == b"hello"


def test_file_truncates_by_default(tmp_path: Path) -> None:
    out = tmp_path / "serial.log"
    out.write_bytes(b"old content")
    chardev: FileChardev = qom.object_new("chardev-file", {"id": "f", "path": str(out)})
    chardev.open()
    chardev.write(b"new\n")
    chardev.close()
    assert out.read_bytes() == b"new\n"


def test_file_append(tmp_path: Path) -> None:
    out = tmp_path / "serial.log"
    out.write_bytes(b"old\n")
    chardev: FileChardev = qom.object_new("chardev-file",
                                          {"id": "f", "path": str(out), "append": "on"})
    chardev.open()
    chardev.write(b"new\n")
    chardev.close()
    chardev.close()  # twice is fine
    assert out.read_bytes() == b"old\nnew\n"


def test_file_input_path_is_delivered(tmp_path: Path, host: Any,
                                      frontend: Any) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"typed input")
    chardev: FileChardev = qom.object_new("chardev-file", {
        "id": "f", "path": str(tmp_path / "out"), "input-path": str(source)})
    chardev.open()
    chardev.set_handlers(frontend.receive, frontend.can_receive)
    chardev.attach_loop(host)
    host.run_until(lambda: frontend.data == b"typed input")
    host.run_until(lambda: not host.readers)  # EOF: no more polling
    chardev.close()


@pytest.mark.parametrize(("props", "message"), [
    ({"path": "/nonexistent/dir/out"}, "Could not open '/nonexistent/dir/out': No such file or "
                                       "directory"),
    ({}, "chardev: file: no filename given"),
])
def test_file_errors(props: dict[str, str], message: str) -> None:
    chardev = qom.object_new("chardev-file", {"id": "f", **props})
    with pytest.raises(ConfigError) as info:
        chardev.open()
    assert str(info.value) == message


def test_ringbuf_keeps_the_newest_bytes() -> None:
    ring: RingbufChardev = qom.object_new("chardev-ringbuf", {"id": "r", "size": "8"})
    ring.open()
    ring.write(b"0123456789")
    assert ring.peek() == b"23456789"
    assert ring.read(3) == b"234"
    assert ring.read() == b"56789"
    assert ring.read() == b""


def test_ringbuf_input_respects_flow_control(frontend: Any) -> None:
    ring: RingbufChardev = qom.object_new("chardev-ringbuf", {"id": "r"})
    ring.open()
    frontend.room = 2
    ring.set_handlers(frontend.receive, frontend.can_receive)
    ring.write_input(b"abcdef")
    assert frontend.data == b"ab"
    frontend.room = 100
    ring.accept_input()
    assert frontend.data == b"abcdef"


def test_ringbuf_size_must_be_a_power_of_two() -> None:
    ring = qom.object_new("chardev-ringbuf", {"id": "r", "size": "3"})
    with pytest.raises(ConfigError, match="size of ringbuf chardev must be power of two"):
        ring.open()


def test_pty_announces_itself_and_carries_bytes(capsys: pytest.CaptureFixture[str],
                                                host: Any, frontend: Any) -> None:
    pty: PtyChardev = qom.object_new("chardev-pty", {"id": "p0"})
    pty.open()
    err = capsys.readouterr().err
    match = re.fullmatch(r"char device redirected to (/dev/pts/\d+) \(label p0\)\n", err)
    assert match is not None and match.group(1) == pty.path
    assert pty.filename == f"pty:{pty.path}"
    pty.set_handlers(frontend.receive, frontend.can_receive, frontend.event)
    pty.attach_loop(host)
    user = os.open(pty.path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(user, b"ls\r")
        host.run_until(lambda: frontend.data == b"ls\r")  # raw: no CR/LF translation
        pty.write(b"guest output")
        got = b""
        while len(got) < len(b"guest output"):
            got += os.read(user, 100)
        assert got == b"guest output"
    finally:
        os.close(user)
    # Nobody attached any more: the guest's output is not blocked.
    for _ in range(2000):
        assert pty.write(b"x" * 64) == 64
    pty.close()


def test_unpollable_input_is_read_at_once(tmp_path: Path, frontend: Any) -> None:
    """epoll (asyncio's main loop) cannot watch a regular file or /dev/null."""
    import asyncio

    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file")
    chardev: FileChardev = qom.object_new("chardev-file", {
        "id": "f", "path": str(tmp_path / "out"), "input-path": str(source)})
    chardev.open()
    chardev.set_handlers(frontend.receive, frontend.can_receive)
    loop = asyncio.new_event_loop()
    try:
        chardev.attach_loop(loop)
        assert frontend.data == b"from a file"
        assert chardev.fileno() is None
    finally:
        chardev.close()
        loop.close()
