"""Rate limits on guest-triggerable events, as QEMU's monitor applies them (monitor/monitor.c).

An event listed in :data:`RATES` is sent at once when none of its kind (per key) went out in
the last period; one arriving within the period is held, a later one replacing it, and the held
one goes out when the period ends, which starts a new period.  So a guest that opens and closes
a virtio-serial port in a loop produces at most one ``VSERPORT_CHANGE`` per port and second,
and the last state always arrives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

RATES_NS = {
    "RTC_CHANGE": 1_000_000_000,
    "WATCHDOG": 1_000_000_000,
    "BALLOON_CHANGE": 1_000_000_000,
    "QUORUM_REPORT_BAD": 1_000_000_000,
    "QUORUM_FAILURE": 1_000_000_000,
    "VSERPORT_CHANGE": 1_000_000_000,
    "MEMORY_DEVICE_SIZE_CHANGE": 1_000_000_000,
}
"""Minimum time between two events of a kind (QEMU's ``monitor_qapi_event_conf``)."""

_KEY_FIELD = {"VSERPORT_CHANGE": "id", "QUORUM_REPORT_BAD": "node-name",
              "MEMORY_DEVICE_SIZE_CHANGE": "qom-path"}
"""Events limited per instance rather than per kind, and the data field naming it."""

Schedule = Callable[[int, Callable[[], None]], object]
Deliver = Callable[[str, dict[str, Any]], None]


class EventThrottle:
    """Passes events to ``deliver``, holding back those :data:`RATES_NS` limits; ``schedule``
    runs a callback at a host monotonic time in ns (:meth:`kvmpy.system.System.schedule`)."""

    def __init__(self, deliver: Deliver, schedule: Schedule) -> None:
        self._deliver = deliver
        self._schedule = schedule
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], dict[str, Any] | None] = {}
        """Keys within their period, with the event waiting for its end (None: nothing)."""

    def emit(self, event: str, data: dict[str, Any]) -> None:
        rate = RATES_NS.get(event)
        if rate is None:
            self._deliver(event, data)
            return
        field = _KEY_FIELD.get(event)
        key = (event, str(data.get(field, "")) if field else "")
        with self._lock:
            if key in self._held:
                self._held[key] = data
                return
            self._held[key] = None
        self._deliver(event, data)
        self._arm(key, rate)

    def _arm(self, key: tuple[str, str], rate: int) -> None:
        self._schedule(time.monotonic_ns() + rate, lambda: self._period_over(key, rate))

    def _period_over(self, key: tuple[str, str], rate: int) -> None:
        with self._lock:
            data = self._held.get(key)
            if data is None:
                self._held.pop(key, None)
                return
            self._held[key] = None
        self._deliver(key[0], data)
        self._arm(key, rate)
