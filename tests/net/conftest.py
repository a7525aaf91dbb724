"""A real asyncio main loop with the calls a network back-end makes on the System, and a fake
NIC that records frames and answers ARP for the guest address."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvmpy.net.base import NetBackend

from . import packets


class MainLoop:
    """What :class:`kvmpy.system.System` offers back-ends, with the same semantics."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lock = threading.RLock()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def schedule(self, deadline_ns: int, callback: Callable[[], None]) -> Callable[[], None]:
        def fire() -> None:
            with self.lock:
                callback()

        when = deadline_ns / 1e9 - time.monotonic() + self.loop.time()
        return self.loop.call_at(when, fire).cancel

    def run_for(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def run_until(self, condition: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run the loop until ``condition()`` is true; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            self.run_for(0.002)

    def close(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


class FakeNic:
    """The NIC peer: keeps every frame; answers ARP requests for the guest's address."""

    def __init__(self, netdev: NetBackend, mac: bytes = packets.GUEST_MAC,
                 ip: str = packets.GUEST_IP) -> None:
        self.netdev = netdev
        self.mac = mac
        self.ip = packets.ip4(ip)
        self.frames: list[bytes] = []
        self.room = True
        netdev.attach(self, "fake-nic")

    def receive(self, frame: bytes) -> bool:
        if not self.room:
            return False
        self.frames.append(frame)
        arp = packets.parse_arp(frame)
        if arp is not None and arp.op == 1 and arp.target_ip == self.ip:
            self.netdev.transmit(packets.arp_reply(self.mac, self.ip, arp.sender_mac,
                                                   arp.sender_ip))
        return True

    def send(self, dst_mac: bytes, ethertype: int, payload: bytes) -> None:
        self.netdev.transmit(packets.ethernet(dst_mac, self.mac, ethertype, payload))

    def take(self, match: Callable[[bytes], Any]) -> Any:
        """The first frame (parsed) that ``match`` accepts, removed from the list."""
        for index, frame in enumerate(self.frames):
            value = match(frame)
            if value:
                del self.frames[index]
                return value
        return None


@pytest.fixture
def main_loop() -> Iterator[MainLoop]:
    loop = MainLoop()
    yield loop
    loop.close()
