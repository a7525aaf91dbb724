"""Test doubles for device models: interrupt lines that record their levels, a buffer chardev."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kvmpy import log
from kvmpy.chardev.base import Chardev
from kvmpy.hw.irq import IrqLine


class FakeIrq(IrqLine):
    """An interrupt line that remembers every level it was set to."""

    def __init__(self, n: int = 0) -> None:
        self.history: list[bool] = []
        super().__init__(lambda _n, level: self.history.append(level), n)


class BufferChardev(Chardev):
    """A chardev backend that collects output in ``output`` and lets a test type input."""

    def __init__(self, accept: int | None = None) -> None:
        super().__init__()
        self.output = bytearray()
        self.accept = accept

    def write(self, data: bytes) -> int:
        if self.accept is not None:
            data = data[: self.accept]
        self.output += data
        return len(data)

    def type(self, text: bytes) -> None:
        self.deliver(text)

    @property
    def pending(self) -> bytes:
        return self._pending


class GuestErrors:
    """Guest errors logged during a test."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self._caplog.records if r.name == "kvmpy.guest_errors"]

    def clear(self) -> None:
        self._caplog.clear()

    def __len__(self) -> int:
        return len(self.messages)


@pytest.fixture
def guest_errors(caplog: pytest.LogCaptureFixture,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[GuestErrors]:
    monkeypatch.setattr(log, "_guest_rate", log._RateLimit())
    caplog.set_level(logging.DEBUG, logger="kvmpy.guest_errors")
    yield GuestErrors(caplog)


@pytest.fixture
def make_irq() -> type[FakeIrq]:
    """The FakeIrq class (conftest modules cannot be imported with --import-mode=importlib)."""
    return FakeIrq


@pytest.fixture
def chardev() -> BufferChardev:
    return BufferChardev()
