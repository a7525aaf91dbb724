"""kvmpy.mainloop: asyncio's event-loop semantics for the calls kvmpy makes, on real pipes,
threads and signals."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from kvmpy.mainloop import MainLoop


@pytest.fixture
def loop() -> Iterator[MainLoop]:
    main_loop = MainLoop()
    yield main_loop
    main_loop.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_NONBLOCK)
    yield r, w
    os.close(r)
    os.close(w)


def run_turns(loop: MainLoop, turns: int = 1) -> None:
    for _ in range(turns):
        loop.call_soon(loop.stop)
        loop.run_forever()


def test_calls_run_in_order_and_ones_queued_while_running_wait_a_turn(loop: MainLoop) -> None:
    seen: list[str] = []
    loop.call_soon(seen.append, "a")
    loop.call_soon(lambda: loop.call_soon(seen.append, "later"))
    loop.call_soon(seen.append, "b")
    loop.stop()  # before run_forever: exactly one turn
    loop.run_forever()
    assert seen == ["a", "b"]
    loop.stop()
    loop.run_forever()
    assert seen == ["a", "b", "later"]


def test_a_cancelled_call_does_not_run(loop: MainLoop) -> None:
    seen: list[int] = []
    loop.call_soon(seen.append, 1).cancel()
    run_turns(loop)
    assert seen == []


def test_a_reader_runs_while_readable_and_stops_when_removed(loop: MainLoop,
                                                             pipe: tuple[int, int]) -> None:
    r, w = pipe
    got: list[bytes] = []
    loop.add_reader(r, lambda: got.append(os.read(r, 100)))
    run_turns(loop)
    assert got == []  # nothing to read: the reader does not run
    os.write(w, b"hello")
    run_turns(loop)
    assert got == [b"hello"]
    assert loop.remove_reader(r) is True
    assert loop.remove_reader(r) is False
    os.write(w, b"more")
    run_turns(loop)
    assert got == [b"hello"]


def test_a_second_reader_replaces_the_first_and_a_writer_shares_the_descriptor(
        loop: MainLoop) -> None:
    import socket

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        calls: list[str] = []
        loop.add_reader(a.fileno(), calls.append, "first")
        loop.add_reader(a.fileno(), calls.append, "second")
        loop.add_writer(a.fileno(), calls.append, "writable")
        b.send(b"x")
        run_turns(loop)
        assert sorted(calls) == ["second", "writable"]
        assert loop.remove_writer(a.fileno()) is True
        calls.clear()
        run_turns(loop)
        assert calls == ["second"]  # the reader stays when the writer goes
    finally:
        a.close()
        b.close()


def test_epoll_refuses_a_regular_file_as_asyncio_does(loop: MainLoop) -> None:
    fd = os.open(__file__, os.O_RDONLY)
    try:
        with pytest.raises(PermissionError):
            loop.add_reader(fd, lambda: None)
        assert loop.remove_reader(fd) is False  # the refused descriptor is not registered
    finally:
        os.close(fd)


def test_timers_fire_in_deadline_order_and_a_cancelled_one_does_not(loop: MainLoop) -> None:
    seen: list[str] = []
    now = loop.time()
    loop.call_at(now + 0.06, seen.append, "late")
    loop.call_later(0.02, seen.append, "early")
    loop.call_later(0.04, seen.append, "cancelled").cancel()
    loop.call_at(now + 0.08, loop.stop)
    started = time.monotonic()
    loop.run_forever()
    assert seen == ["early", "late"]
    assert time.monotonic() - started >= 0.08  # the loop slept until the stop timer


def test_a_call_from_another_thread_wakes_a_sleeping_loop(loop: MainLoop) -> None:
    seen: list[str] = []

    def other() -> None:
        time.sleep(0.05)
        loop.call_soon_threadsafe(seen.append, "from thread")
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=other)
    thread.start()
    loop.run_forever()  # nothing else would wake it: no timers, no descriptors
    thread.join()
    assert seen == ["from thread"]


def test_stop_from_another_thread_ends_run_forever(loop: MainLoop) -> None:
    thread = threading.Thread(target=lambda: (time.sleep(0.05), loop.stop()))
    thread.start()
    loop.run_forever()
    thread.join()


def test_a_failing_callback_is_logged_and_the_loop_goes_on(
        loop: MainLoop, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken() -> None:
        raise ValueError("bug")

    loop.call_soon(broken)
    loop.call_soon(seen.append, "after")
    with caplog.at_level(logging.ERROR, logger="kvmpy.mainloop"):
        run_turns(loop)
    assert seen == ["after"]
    [record] = caplog.records
    assert record.getMessage().startswith("Exception in callback")
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_a_signal_runs_its_handler_on_the_loop_and_close_restores_the_default(
        loop: MainLoop) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    previous = signal.getsignal(signal.SIGUSR1)
    got: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda n: (got.append(n), loop.stop()),
                            signal.SIGUSR1)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_forever()
        assert got == [signal.SIGUSR1]
    finally:
        loop.close()
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        signal.signal(signal.SIGUSR1, previous)


def test_a_closed_loop_refuses_calls_and_ignores_removals(pipe: tuple[int, int]) -> None:
    loop = MainLoop()
    loop.close()
    loop.close()  # idempotent
    assert loop.is_closed()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon_threadsafe(lambda: None)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(pipe[0], lambda: None)
    assert loop.remove_reader(pipe[0]) is False
    loop.stop()  # a late quit from another thread: nothing to wake, no error
