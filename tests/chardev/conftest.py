"""A tiny main loop for backend tests: the two calls a backend makes on the System."""

from __future__ import annotations

import select
import time
from collections.abc import Callable

import pytest


class Frontend:
    """Records what a backend hands to its frontend."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.data = b""
        self.events: list[str] = []
        self.room = room

    def receive(self, data: bytes) -> None:
        assert len(data) <= self.room
        self.data += data
        self.room -= len(data)

    def can_receive(self) -> int:
        return self.room

    def event(self, name: str) -> None:
        self.events.append(name)


class LoopHost:
    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def poll(self, timeout: float = 0.05) -> None:
        if not self.readers:
            time.sleep(timeout)
            return
        ready, _, _ = select.select(list(self.readers), [], [], timeout)
        for fd in ready:
            callback = self.readers.get(fd)
            if callback is not None:
                callback()

    def run_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            self.poll()


@pytest.fixture
def host() -> LoopHost:
    return LoopHost()


@pytest.fixture
def frontend() -> Frontend:
    return Frontend()


@pytest.fixture
def make_frontend() -> Callable[[], Frontend]:
    return Frontend
