"""Test doubles for device models: interrupt lines that record their levels, a buffer chardev."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from typing import Any

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


class VirtioTestDriver:
    """A minimal virtio-mmio driver over an MMIO bus, doing what Linux's virtio_mmio does:
    probe, negotiate, place queues (legacy PFN or modern addresses), post chains, notify."""

    def __init__(self, bus: Any, ram: Any, base: int, legacy: bool, num: int = 16) -> None:
        self.bus, self.ram, self.base, self.legacy, self.num = bus, ram, base, legacy, num
        self.queues: dict[int, dict[str, int]] = {}
        self.next_page = ram.base + 0x10000
        self.buffers = ram.base + 0x80000

    def _pages(self, count: int) -> int:
        addr = self.next_page
        self.next_page += count * 4096
        return addr

    def r(self, off: int) -> int:
        return int(self.bus.read(self.base + off, 4))

    def w(self, off: int, value: int) -> None:
        self.bus.write(self.base + off, 4, value)

    def probe(self, features: int | None = None, queues: int = 1) -> int:
        assert self.r(0) == 0x74726976
        assert self.r(4) == (1 if self.legacy else 2)
        self.w(0x70, 0)
        self.w(0x70, 1)
        self.w(0x70, 3)
        self.w(0x14, 0)
        offered = self.r(0x10)
        self.w(0x14, 1)
        offered |= self.r(0x10) << 32
        wanted = offered if features is None else features
        self.w(0x24, 0)
        self.w(0x20, wanted & 0xFFFFFFFF)
        if not self.legacy:
            self.w(0x24, 1)
            self.w(0x20, wanted >> 32)
            self.w(0x70, 0xB)
            assert self.r(0x70) & 8
        else:
            self.w(0x28, 4096)
        for index in range(queues):
            self.setup_queue(index)
        self.w(0x70, self.r(0x70) | 4)
        return offered

    def setup_queue(self, index: int) -> None:
        num = self.num
        self.w(0x30, index)
        assert self.r(0x34) == 1024
        desc = self._pages(3)
        if self.legacy:
            avail = desc + 16 * num
            used = (avail + 2 * (3 + num) + 4095) & ~4095
        else:
            avail, used = desc + 4096, desc + 8192
        self.w(0x38, num)
        if self.legacy:
            assert self.r(0x40) == 0
            self.w(0x3C, 4096)
            self.w(0x40, desc >> 12)
        else:
            for reg, addr in ((0x80, desc), (0x90, avail), (0xA0, used)):
                self.w(reg, addr & 0xFFFFFFFF)
                self.w(reg + 4, addr >> 32)
            self.w(0x44, 1)
        self.queues[index] = {"desc": desc, "avail": avail, "used": used, "next": 0,
                              "avail_idx": 0, "seen": 0, "num": num}

    @property
    def desc(self) -> int:
        return self.queues[0]["desc"]

    @property
    def avail(self) -> int:
        return self.queues[0]["avail"]

    @property
    def used(self) -> int:
        return self.queues[0]["used"]

    def add_buffer(self, data: bytes | int, writable: bool = False) -> tuple[int, int]:
        length = data if isinstance(data, int) else len(data)
        addr = self.buffers
        self.buffers += (length + 15) & ~15
        if not isinstance(data, int):
            self.ram.write(addr, data)
        return addr, length

    def notify(self, queue: int) -> None:
        self.w(0x50, queue)

    def post(self, chain: list[tuple[int, int, bool]], notify: bool = True,
             queue: int = 0) -> int:
        q = self.queues[queue]
        num = q.get("num", self.num)
        head = q["next"]
        for i, (addr, length, writable) in enumerate(chain):
            index = q["next"]
            last = i == len(chain) - 1
            flags = (0 if last else 1) | (2 if writable else 0)
            nxt = (index + 1) % num
            self.ram.write(q["desc"] + 16 * index,
                           struct.pack("<QIHH", addr, length, flags, nxt))
            q["next"] = nxt
        self.ram.write_int(q["avail"] + 4 + 2 * (q["avail_idx"] % num), 2, head)
        q["avail_idx"] = (q["avail_idx"] + 1) & 0xFFFF
        self.ram.write_int(q["avail"] + 2, 2, q["avail_idx"])
        if notify:
            self.notify(queue)
        return head

    def used_idx(self, queue: int = 0) -> int:
        return int(self.ram.read_int(self.queues[queue]["used"] + 2, 2))

    def used_elem(self, i: int, queue: int = 0) -> tuple[int, int]:
        q = self.queues[queue]
        num = q.get("num", self.num)
        head, length = struct.unpack("<II", self.ram.read(q["used"] + 4 + 8 * (i % num), 8))
        return int(head), int(length)

    def new_used(self, queue: int = 0) -> list[tuple[int, int]]:
        """Used elements not seen before."""
        q = self.queues[queue]
        out = []
        while q["seen"] != self.used_idx(queue):
            out.append(self.used_elem(q["seen"], queue))
            q["seen"] = (q["seen"] + 1) & 0xFFFF
        return out
